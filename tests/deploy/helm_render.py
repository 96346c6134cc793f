"""Render a Helm chart with Helm itself, offline: ``helm install`` against a recording API endpoint.

No ``helm`` CLI ships in any registry these machines reach.  ``helm-sdkpy`` (PyPI, Python >= 3.12)
is Helm v4 compiled into a shared library, but it exposes no ``template`` / ``--dry-run`` action: its
``Install`` renders for real and then sends the result to an API server.  So this script starts a
small loopback HTTP endpoint that answers what Helm asks before it installs -- ``/version``, API
discovery (``/api``, ``/apis``, one resource list per group version), the release history it keeps
in Secrets -- stores what it is sent, and returns 404 for anything it does not hold.  The rendering
is Helm's own (template engine, values coalescing, ``values.schema.json`` validation, ``required`` /
``fail``, ``.Capabilities``); the endpoint only pretends to be a cluster with nothing in it.

The result is the release's ``manifest`` (exactly what ``helm template`` prints for a chart without
hooks), the rendered ``NOTES.txt``, and every object Helm POSTed, so a test can check that what
went over the wire is what was rendered.

Run with the Python 3.12 environment that has helm-sdkpy (``make setup`` creates ``.venv-helm``)::

    .venv-helm/bin/python tests/deploy/helm_render.py deploy/helm/s3 -f deploy/helm/s3/values-gpu.yaml
    .venv-helm/bin/python tests/deploy/helm_render.py deploy/helm/s3 --json out.json   # manifest, notes, objects
    .venv-helm/bin/python tests/deploy/helm_render.py deploy/helm/s3 --lint             # helm lint (default values)

Values files are merged the way the helm CLI merges ``-f`` files (maps deep-merged, later files win,
everything else replaced) and handed to Helm, which coalesces them with the chart's ``values.yaml``.
Exit code 0 on success; on failure the message Helm gave (``install failed: ...``) on stderr, code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import os
import sys
import tempfile
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# group/version -> [(plural, Kind, namespaced)]: what the endpoint says the cluster serves.  Helm maps
# every rendered object to a resource through this discovery; a kind missing here fails the install
# exactly as it would on a cluster without it ("no matches for kind ... ensure CRDs are installed").
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True), ("services", "Service", True),
           ("serviceaccounts", "ServiceAccount", True), ("persistentvolumeclaims", "PersistentVolumeClaim", True),
           ("pods", "Pod", True), ("events", "Event", True), ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True),
                ("daemonsets", "DaemonSet", True), ("replicasets", "ReplicaSet", True)],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True), ("ingresses", "Ingress", True)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True), ("rolebindings", "RoleBinding", True),
                                     ("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "scheduling.k8s.io/v1": [("priorityclasses", "PriorityClass", False)],
    "node.k8s.io/v1": [("runtimeclasses", "RuntimeClass", False)],
    "storage.k8s.io/v1": [("storageclasses", "StorageClass", False)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    # kube-prometheus-stack's operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule)
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True), ("podmonitors", "PodMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) pairs of a protobuf message: bytes for length-delimited fields, else ints."""
    out: list[tuple[int, bytes | int]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            out.append((num, v))
        elif wire == 2:
            n, i = _varint(buf, i)
            out.append((num, buf[i:i + n]))
            i += n
        elif wire == 1:
            out.append((num, int.from_bytes(buf[i:i + 8], "little")))
            i += 8
        elif wire == 5:
            out.append((num, int.from_bytes(buf[i:i + 4], "little")))
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    d = dict(_fields(buf))
    return bytes(d.get(1, b"")).decode(), bytes(d.get(2, b""))


def secret_from_protobuf(raw: bytes) -> dict[str, Any]:
    """A v1 Secret sent as Kubernetes protobuf (``k8s\\0`` + runtime.Unknown), as its JSON form.

    Helm keeps its release records in Secrets through client-go's typed client, which speaks protobuf
    to the core API group; only those records arrive this way.  Decoded: name, namespace, labels,
    annotations, type and data (base64, as in JSON) -- all a release record uses."""
    if not raw.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf body")
    envelope = dict(_fields(raw[4:]))
    type_meta = {n: bytes(v).decode() for n, v in _fields(bytes(envelope.get(1, b"")))}
    if type_meta.get(2) != "Secret":
        raise ValueError(f"protobuf body of kind {type_meta.get(2)!r}: only Secrets are decoded")
    meta: dict[str, Any] = {}
    obj: dict[str, Any] = {"apiVersion": type_meta.get(1, "v1"), "kind": "Secret", "metadata": meta}
    for num, val in _fields(bytes(envelope.get(2, b""))):
        if num == 1:
            for mnum, mval in _fields(bytes(val)):
                if mnum in (1, 3) and mval:
                    meta["name" if mnum == 1 else "namespace"] = bytes(mval).decode()
                elif mnum in (11, 12):
                    k, v = _map_entry(bytes(mval))
                    meta.setdefault("labels" if mnum == 11 else "annotations", {})[k] = v.decode()
        elif num == 2:
            k, v = _map_entry(bytes(val))
            obj.setdefault("data", {})[k] = base64.b64encode(v).decode()
        elif num == 3:
            obj["type"] = bytes(val).decode()
    return obj


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason,
            "message": message, "code": code}


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c=d``, ``a!=b``, ``a``): what Helm's release storage uses."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


class RecordingAPI:
    """A loopback endpoint with the discovery of an empty cluster that keeps what it is sent."""

    def __init__(self, kube_version: str) -> None:
        self.kube_version = kube_version
        self.requests: list[dict[str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}  # object path -> object
        self.lock = threading.Lock()
        self._rv = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    if raw.startswith(b"k8s\x00"):
                        body = secret_from_protobuf(raw)
                    else:
                        body = json.loads(raw) if raw else None
                except ValueError as exc:
                    body = {"_undecoded": f"{exc}"}
                with api.lock:
                    api.requests.append({"method": method, "path": url.path, "query": query, "body": body})
                    code, obj = api.route(method, url.path, query, body)
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def do_PATCH(self) -> None:  # noqa: N802
                self._handle("PATCH")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- discovery ----------------------------------------------------------------------------------
    def _version(self) -> dict[str, Any]:
        major, minor, _ = (self.kube_version.split(".") + ["0", "0"])[:3]
        return {"major": major, "minor": minor, "gitVersion": f"v{self.kube_version}", "platform": "linux/amd64",
                "goVersion": "go1.24", "compiler": "gc", "buildDate": "2026-01-01T00:00:00Z"}

    @staticmethod
    def _groups() -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for gv in RESOURCES:
            if "/" in gv:
                g, v = gv.split("/")
                groups.setdefault(g, []).append(v)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}

    @staticmethod
    def _resource_list(gv: str) -> dict[str, Any]:
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": VERBS}
            for plural, kind, namespaced in RESOURCES[gv]]}

    # -- objects ------------------------------------------------------------------------------------
    @staticmethod
    def _split(path: str) -> tuple[str, str, str, str, str] | None:
        """(group/version, namespace, plural, name, subresource) of an object or collection path, else None."""
        parts = path.strip("/").split("/")
        if parts[:1] == ["api"] and len(parts) >= 2:
            gv, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        ns = ""
        if len(rest) >= 3 and rest[0] == "namespaces":  # /namespaces/<ns>/<plural>...: not the namespace itself
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        rest = rest + [""] * (3 - len(rest))
        return gv, ns, rest[0], rest[1], rest[2]

    def object_path(self, obj: dict[str, Any], namespace: str) -> str:
        """Where ``obj`` lives (to seed the endpoint with objects a cluster already has)."""
        gv = obj["apiVersion"]
        plural, _, namespaced = next(r for r in RESOURCES[gv] if r[1] == obj["kind"])
        base = f"/api/{gv}" if gv == "v1" else f"/apis/{gv}"
        ns = obj["metadata"].get("namespace", namespace) if namespaced else ""
        return f"{base}/namespaces/{ns}/{plural}/{obj['metadata']['name']}" if ns else \
            f"{base}/{plural}/{obj['metadata']['name']}"

    def _kind(self, gv: str, plural: str) -> str:
        return next((k for p, k, _ in RESOURCES[gv] if p == plural), "")

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/version":
            return 200, self._version()
        if method == "GET" and path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if method == "GET" and path == "/apis":
            return 200, self._groups()
        gv_path = path.strip("/").removeprefix("api/").removeprefix("apis/")
        if method == "GET" and gv_path in RESOURCES and path.startswith(("/api/", "/apis/")):
            return 200, self._resource_list(gv_path)
        where = self._split(path)
        if where is None:
            return 404, _status(404, "NotFound", f"the recording endpoint does not serve {method} {path}")
        gv, ns, plural, name, sub = where
        kind = self._kind(gv, plural)
        if not kind:
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({plural})")
        if sub:  # a subresource (jobs/x/status): the object itself stands for it
            path = path.rstrip("/").rsplit("/", 1)[0]
            if method != "GET":
                return 405, _status(405, "MethodNotAllowed", f"{method} on {plural}/{sub}")
        prefix = path.rstrip("/").rsplit("/", 1)[0] if name else path.rstrip("/")
        if not name:
            if method == "GET":
                sel = query.get("labelSelector", "")
                items = [o for p, o in self.objects.items() if p.rsplit("/", 1)[0] == prefix
                         and _selector_matches(sel, o.get("metadata", {}).get("labels") or {})]
                return 200, {"kind": f"{kind}List", "apiVersion": gv, "metadata": {"resourceVersion": str(self._rv)},
                             "items": items}
            if method == "POST":
                obj = copy.deepcopy(body)
                if not isinstance(obj, dict) or "name" not in (obj.get("metadata") or {}):
                    return 415, _status(415, "UnsupportedMediaType", "the recording endpoint reads JSON bodies only")
                key = f"{prefix}/{obj['metadata']['name']}"
                if key in self.objects:
                    return 409, _status(409, "AlreadyExists", f"{plural} {obj['metadata']['name']!r} already exists")
                self._rv += 1
                obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(self._rv),
                                       creationTimestamp="2026-01-01T00:00:00Z")
                if ns:
                    obj["metadata"].setdefault("namespace", ns)
                self.objects[key] = obj
                return 201, obj
            return 405, _status(405, "MethodNotAllowed", f"{method} on a collection")
        key = f"{prefix}/{name}"
        if method == "GET":
            if key in self.objects:
                return 200, self.objects[key]
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        if method in ("PUT", "PATCH"):
            if key not in self.objects:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            if method == "PUT" and isinstance(body, dict):
                self._rv += 1
                obj = copy.deepcopy(body)
                obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
                self.objects[key] = obj
            return 200, self.objects[key]
        if method == "DELETE":
            if self.objects.pop(key, None) is None:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return 405, _status(405, "MethodNotAllowed", method)

    def created(self) -> list[dict[str, Any]]:
        """Every object Helm created, in order, except its own release records."""
        out = []
        for r in self.requests:
            if r["method"] == "POST" and isinstance(r["body"], dict):
                labels = (r["body"].get("metadata") or {}).get("labels") or {}
                if r["body"].get("kind") == "Secret" and labels.get("owner") == "helm":
                    continue
                out.append(r["body"])
        return out


def merge_values(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """The helm CLI's merge of ``-f`` files: maps merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_values(out[k], v)
        else:
            out[k] = v
    return out


def _kubeconfig(url: str, namespace: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "render",
        "clusters": [{"name": "render", "cluster": {"server": url}}],
        "users": [{"name": "render", "user": {"token": "render"}}],
        "contexts": [{"name": "render", "context": {"cluster": "render", "user": "render", "namespace": namespace}}],
    })


def render(chart: str, values: dict[str, Any], release: str = "s3", namespace: str = "s3",
           kube_version: str = "1.31.0", existing: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``helm install --wait=false`` of ``chart`` against the recording endpoint; ``existing``: objects the
    "cluster" already holds (what the chart's ``lookup`` calls find, e.g. a Secret of an earlier install)."""
    api = RecordingAPI(kube_version)
    for obj in existing or []:
        api.objects[api.object_path(obj, namespace)] = obj
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kc = Path(tmp) / "kubeconfig"
            kc.write_text(_kubeconfig(api.url, namespace))
            # Helm's own files (cache, config) go to the temp dir.  Go copies the environment when the
            # library loads, so this must happen before helm_sdkpy loads it.
            for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
                os.environ[var] = str(Path(tmp) / var.lower())
            import helm_sdkpy

            cfg = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=str(kc))
            result = asyncio.run(helm_sdkpy.Install(cfg).run(
                release, str(Path(chart).resolve()), values=values, wait=False, timeout=60,
                disable_openapi_validation=True))
        release_obj = result.get("release", result) if isinstance(result, dict) else {}
        # hooks (the `helm test` pod) are not in the manifest and are not sent on install: kept apart
        hooks = [{"name": h.get("name", ""), "kind": h.get("kind", ""), "path": h.get("path", ""),
                  "events": h.get("events", []), "manifest": h.get("manifest", "")}
                 for h in release_obj.get("hooks") or []]
        return {"manifest": release_obj.get("manifest", ""), "hooks": hooks,
                "notes": (release_obj.get("info") or {}).get("notes", ""),
                "objects": api.created(), "requests": len(api.requests),
                "helm": _helm_version(), "result_keys": sorted(result) if isinstance(result, dict) else []}
    finally:
        api.close()


def _helm_version() -> str:
    import helm_sdkpy

    return str(helm_sdkpy.get_version())


def lint(chart: str) -> dict[str, Any]:
    import helm_sdkpy

    return asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(Path(chart).resolve())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("chart")
    p.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable, later wins)")
    p.add_argument("--set-json", action="append", default=[], help="a JSON object merged over the values files")
    p.add_argument("--release", default="s3")
    p.add_argument("--namespace", default="s3")
    p.add_argument("--kube-version", default="1.31.0", help="the version the endpoint reports (.Capabilities)")
    p.add_argument("--existing", action="append", default=[],
                   help="a YAML file of objects the cluster already holds (lookup finds them)")
    p.add_argument("--json", dest="json_out", help="write {manifest, notes, objects, ...} here instead of printing")
    p.add_argument("--lint", action="store_true", help="helm lint the chart (its own values) and print the result")
    args = p.parse_args(argv)
    try:
        if args.lint:
            result = lint(args.chart)
            print(json.dumps(result, indent=2))
            # helm-sdkpy returns severities and paths, not the messages: 1 info, 2 warning, 3 error
            findings = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]
            print(f"helm lint: {result.get('TotalChartsLinted', 0)} chart(s), "
                  f"{sum(m['Severity'] == 2 for m in findings)} warning(s), "
                  f"{sum(m['Severity'] >= 3 for m in findings)} error(s)"
                  + "".join(f"\n  severity {m['Severity']} in {m.get('Path')}" for m in findings), file=sys.stderr)
            return 1 if findings or result.get("Errors") else 0
        import yaml  # noqa: PLC0415 - only the rendering needs it

        values: dict[str, Any] = {}
        for f in args.values:
            values = merge_values(values, yaml.safe_load(Path(f).read_text()) or {})
        for s in args.set_json:
            values = merge_values(values, json.loads(s))
        existing = [o for f in args.existing for o in yaml.safe_load_all(Path(f).read_text()) if o]
        out = render(args.chart, values, args.release, args.namespace, args.kube_version, existing)
    except Exception as exc:  # noqa: BLE001 - Helm's message is the useful part
        print(f"helm_render: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
        return 0
    try:
        sys.stdout.write(out["manifest"].rstrip("\n") + "\n")
        if out["notes"]:
            sys.stdout.write("\n# NOTES.txt\n" + "".join(f"# {ln}\n" if ln else "#\n"
                                                         for ln in out["notes"].rstrip("\n").split("\n")))
        sys.stdout.flush()
    except BrokenPipeError:  # `make chart-render | head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
