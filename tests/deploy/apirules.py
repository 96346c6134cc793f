"""The API server's and the scheduler's semantic rules that a schema check does not see, applied to rendered objects.

``kubernetes-validate`` checks each object against the OpenAPI schema: field names and types.  The API server
then runs each kind's validation (``pkg/apis/*/validation``), and a few more things only show up when the
scheduler or the disruption controller act on the objects.  ``check(docs)`` returns one message per broken rule,
naming the object, for the rules below (the ones this chart can break):

* Deployment: ``Recreate`` carries no ``rollingUpdate``; ``RollingUpdate`` does not have maxSurge and
  maxUnavailable both 0; the selector is non-empty and matches the pod template's labels (also StatefulSet, Job
  pods are free).
* PodDisruptionBudget: exactly one of minAvailable / maxUnavailable; it selects a workload; it does not block
  every eviction (minAvailable >= replicas, or maxUnavailable 0).
* pod specs (Deployment, StatefulSet, Job, Pod): unique container, port and volume names; port names are
  IANA service names (<= 15 characters); every probe has one handler whose port is a port the container declares;
  every volume mount names a volume (or a volumeClaimTemplate) and mount paths are unique; env var names are valid
  (``[-._a-zA-Z][-._a-zA-Z0-9]*``), unique, and have a value or a valueFrom, not both; requests <= limits;
  extended resources (nvidia.com/gpu, ...) are whole numbers, in limits, and requests equal limits;
  restartPolicy fits the kind; runAsNonRoot is not contradicted by runAsUser 0.
* Service: its selector selects some pod template, and a named targetPort is a port name of those pods.
* NetworkPolicy: named ports exist on the pods it selects.
* labels: keys and values are valid label syntax.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# resources the API server lets a container overcommit (requests < limits); every other one (nvidia.com/gpu,
# hugepages aside) must have requests == limits
OVERCOMMITTABLE = {"cpu", "memory", "ephemeral-storage"}
_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|)$")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity (``500m``, ``8Gi``, ``1e3``, ``2``) as a number."""
    m = _QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = Decimal(m.group(1)), m.group(2)
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    return number * Decimal(_SUFFIX[suffix])


def _name(d: dict[str, Any]) -> str:
    return f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_template(d: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template (metadata + spec) of a workload, the pod itself for a Pod, else None."""
    if d.get("kind") == "Pod":
        return {"metadata": d.get("metadata") or {}, "spec": d.get("spec") or {}}
    if d.get("kind") == "CronJob":
        return d["spec"]["jobTemplate"]["spec"]["template"]
    if d.get("kind") in WORKLOADS:
        return d["spec"]["template"]
    return None


def check(docs: list[dict[str, Any]]) -> list[str]:
    """Every broken rule among ``docs`` (one rendering, hooks included), as "Kind/name: what"."""
    problems: list[str] = []
    templates = [(d, t) for d in docs if (t := pod_template(d)) is not None]
    for d in docs:
        where = _name(d)
        for key, value in ((d.get("metadata") or {}).get("labels") or {}).items():
            _check_label(where, key, value, problems)
        kind = d.get("kind")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            _check_workload(where, d, problems)
        if kind == "PodDisruptionBudget":
            _check_pdb(where, d, [w for w, _ in templates if w.get("kind") in ("Deployment", "StatefulSet")], problems)
        if kind == "Service":
            _check_service(where, d, [t for _, t in templates], problems)
        if kind == "NetworkPolicy":
            _check_netpol(where, d, [t for _, t in templates], problems)
    for d, t in templates:
        where = _name(d)
        for key, value in ((t.get("metadata") or {}).get("labels") or {}).items():
            _check_label(f"{where} pod template", key, value, problems)
        claims = {c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates", [])} \
            if d.get("kind") == "StatefulSet" else set()
        _check_pod(where, d.get("kind", ""), t["spec"], claims, problems)
    return problems


def _check_label(where: str, key: str, value: Any, problems: list[str]) -> None:
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))) or len(name) > 63 \
            or not LABEL_NAME.match(name):
        problems.append(f"{where}: invalid label key {key!r}")
    if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
        problems.append(f"{where}: invalid value {value!r} of label {key!r}")


def _check_workload(where: str, d: dict[str, Any], problems: list[str]) -> None:
    spec = d["spec"]
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = (spec["template"].get("metadata") or {}).get("labels") or {}
    if not sel and not (spec.get("selector") or {}).get("matchExpressions"):
        problems.append(f"{where}: empty selector")
    if not _matches(sel, labels):
        problems.append(f"{where}: selector {sel} does not match the template labels (`selector` does not match "
                        "template `labels`)")
    if d["kind"] == "Deployment":
        strategy = spec.get("strategy") or {}
        stype = strategy.get("type", "RollingUpdate")
        if stype == "Recreate" and "rollingUpdate" in strategy:
            problems.append(f"{where}: strategy.rollingUpdate may not be specified when strategy type is 'Recreate'")
        if stype == "RollingUpdate":
            ru = strategy.get("rollingUpdate") or {}
            if str(ru.get("maxSurge", "25%")) in ("0", "0%") and str(ru.get("maxUnavailable", "25%")) in ("0", "0%"):
                problems.append(f"{where}: maxSurge and maxUnavailable may not both be 0")
        if stype not in ("Recreate", "RollingUpdate"):
            problems.append(f"{where}: unknown strategy type {stype!r}")
    if d["kind"] == "StatefulSet" and not spec.get("serviceName", "x"):
        problems.append(f"{where}: empty serviceName")


def _replicas(w: dict[str, Any]) -> int:
    return int(w["spec"].get("replicas", 1))


def _check_pdb(where: str, d: dict[str, Any], workloads: list[dict[str, Any]], problems: list[str]) -> None:
    spec = d["spec"]
    if ("minAvailable" in spec) == ("maxUnavailable" in spec):
        problems.append(f"{where}: exactly one of minAvailable and maxUnavailable must be set")
        return
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    chosen = [w for w in workloads if _matches(sel, (w["spec"]["template"].get("metadata") or {}).get("labels") or {})]
    if not chosen:
        problems.append(f"{where}: selects no workload's pods")
        return
    replicas = sum(_replicas(w) for w in chosen)

    def count(v: Any) -> float:
        s = str(v)
        return replicas * float(s[:-1]) / 100 if s.endswith("%") else float(s)

    if "minAvailable" in spec and replicas and count(spec["minAvailable"]) >= replicas:
        problems.append(f"{where}: minAvailable {spec['minAvailable']} >= the {replicas} replicas it covers: no "
                        "voluntary eviction (node drain) can ever proceed")
    if "maxUnavailable" in spec and count(spec["maxUnavailable"]) < 1 and not str(spec["maxUnavailable"]).endswith("%"):
        problems.append(f"{where}: maxUnavailable 0 blocks every voluntary eviction")


def _pod_ports(template: dict[str, Any]) -> tuple[set[str], set[int]]:
    names, numbers = set(), set()
    for c in template["spec"].get("containers", []):
        for p in c.get("ports", []):
            numbers.add(int(p["containerPort"]))
            if "name" in p:
                names.add(p["name"])
    return names, numbers


def _check_service(where: str, d: dict[str, Any], templates: list[dict[str, Any]], problems: list[str]) -> None:
    sel = d["spec"].get("selector") or {}
    if not sel:
        return  # a Service without selector (manual Endpoints): nothing to check
    chosen = [t for t in templates if _matches(sel, (t.get("metadata") or {}).get("labels") or {})]
    if not chosen:
        problems.append(f"{where}: selector {sel} selects no pods")
        return
    names = set(p.get("name", "") for p in d["spec"].get("ports", []))
    if len(names) != len(d["spec"].get("ports", [])):
        problems.append(f"{where}: port names are not unique")
    for p in d["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        for t in chosen:
            pnames, pnums = _pod_ports(t)
            if isinstance(target, str) and target not in pnames:
                problems.append(f"{where}: targetPort {target!r} is no port name of the pods it selects")
            if isinstance(target, int) and target not in pnums:
                problems.append(f"{where}: targetPort {target} is no container port of the pods it selects")


def _check_netpol(where: str, d: dict[str, Any], templates: list[dict[str, Any]], problems: list[str]) -> None:
    sel = (d["spec"].get("podSelector") or {}).get("matchLabels") or {}
    chosen = [t for t in templates if _matches(sel, (t.get("metadata") or {}).get("labels") or {})]
    if not chosen:
        problems.append(f"{where}: podSelector {sel} selects no pods")
    for rule in d["spec"].get("ingress", []):
        for p in rule.get("ports", []):
            if isinstance(p.get("port"), str):
                for t in chosen:
                    if p["port"] not in _pod_ports(t)[0]:
                        problems.append(f"{where}: port {p['port']!r} is no port name of the pods it selects")


def _check_pod(where: str, kind: str, pod: dict[str, Any], claims: set[str], problems: list[str]) -> None:
    restart = pod.get("restartPolicy", "Always")
    allowed = {"Job": {"Never", "OnFailure"}, "Pod": {"Always", "Never", "OnFailure"}}.get(kind, {"Always"})
    if restart not in allowed:
        problems.append(f"{where}: restartPolicy {restart!r} is not allowed for a {kind} (allowed: {sorted(allowed)})")
    volumes = [v["name"] for v in pod.get("volumes", [])]
    if len(set(volumes)) != len(volumes):
        problems.append(f"{where}: duplicate volume names {volumes}")
    psc = pod.get("securityContext") or {}
    containers = pod.get("initContainers", []) + pod.get("containers", [])
    names = [c["name"] for c in containers]
    if len(set(names)) != len(names):
        problems.append(f"{where}: duplicate container names {names}")
    for c in containers:
        cw = f"{where} container {c['name']}"
        sc = {**psc, **(c.get("securityContext") or {})}
        if sc.get("runAsNonRoot") and sc.get("runAsUser") == 0:
            problems.append(f"{cw}: runAsNonRoot with runAsUser 0")
        ports = c.get("ports", [])
        pnames = [p["name"] for p in ports if "name" in p]
        if len(set(pnames)) != len(pnames):
            problems.append(f"{cw}: duplicate port names {pnames}")
        for p in ports:
            if not 0 < int(p["containerPort"]) < 65536:
                problems.append(f"{cw}: containerPort {p['containerPort']} out of range")
            if "name" in p and (len(p["name"]) > 15 or not IANA_SVC_NAME.match(p["name"])):
                problems.append(f"{cw}: port name {p['name']!r} is not an IANA service name (<= 15 characters)")
        numbers = {int(p["containerPort"]) for p in ports}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c:
                _check_probe(f"{cw} {probe}", c[probe], set(pnames), numbers, problems)
        mounts = c.get("volumeMounts", [])
        for m in mounts:
            if m["name"] not in volumes and m["name"] not in claims:
                problems.append(f"{cw}: volumeMount {m['name']!r} names no volume")
        paths = [m["mountPath"] for m in mounts]
        if len(set(paths)) != len(paths):
            problems.append(f"{cw}: duplicate mount paths {paths}")
        env_names = []
        for e in c.get("env", []):
            env_names.append(e["name"])
            if not ENV_NAME.match(e["name"]):
                problems.append(f"{cw}: invalid env var name {e['name']!r} (must match {ENV_NAME.pattern})")
            if "value" in e and "valueFrom" in e:
                problems.append(f"{cw}: env {e['name']} has both value and valueFrom")
        dupes = sorted({n for n in env_names if env_names.count(n) > 1})
        if dupes:
            problems.append(f"{cw}: env vars set twice: {dupes}")
        _check_resources(cw, c.get("resources") or {}, problems)


def _check_probe(where: str, probe: dict[str, Any], names: set[str], numbers: set[int], problems: list[str]) -> None:
    handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if h in probe]
    if len(handlers) != 1:
        problems.append(f"{where}: must have exactly one handler, has {handlers}")
        return
    (h,) = handlers
    if h == "exec":
        return
    port = probe[h].get("port")
    if h == "grpc" and not isinstance(port, int):
        problems.append(f"{where}: grpc probe port must be a number, got {port!r}")
    elif isinstance(port, str) and port not in names:
        problems.append(f"{where}: port {port!r} is no port name of the container")
    elif isinstance(port, int) and port not in numbers:
        problems.append(f"{where}: port {port} is no port the container declares")
    for k in ("periodSeconds", "timeoutSeconds", "failureThreshold"):
        if k in probe and int(probe[k]) < 1:
            problems.append(f"{where}: {k} must be >= 1")
    if where.endswith(("livenessProbe", "startupProbe")) and int(probe.get("successThreshold", 1)) != 1:
        problems.append(f"{where}: successThreshold must be 1")


def _check_resources(where: str, res: dict[str, Any], problems: list[str]) -> None:
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    for name in sorted(set(requests) | set(limits)):
        overcommit = name in OVERCOMMITTABLE or name.startswith("hugepages-")
        try:
            req = quantity(requests[name]) if name in requests else None
            lim = quantity(limits[name]) if name in limits else None
        except ValueError as exc:
            problems.append(f"{where}: resource {name}: {exc}")
            continue
        if req is not None and lim is not None and req > lim:
            problems.append(f"{where}: requests {name} {requests[name]} > limits {limits[name]} (must be less than "
                            "or equal to the limit)")
        if not overcommit:
            for v in (req, lim):
                if v is not None and v != int(v):
                    problems.append(f"{where}: {name} must be a whole number, got {v}")
            if req is not None and lim is None:
                problems.append(f"{where}: {name} in requests must also be in limits (not overcommittable)")
            elif req is not None and req != lim:
                problems.append(f"{where}: requests {name} {requests[name]} must equal limits {limits[name]} "
                                "(not overcommittable)")
