"""The Helm chart deploy/helm/s3, rendered by Helm itself (helm-sdkpy; see helm_render.py) for the default,
CPU and GPU values, and checked object by object:

* ``helm lint`` finds no warning or error; every rendered manifest validates against the Kubernetes 1.31 and
  1.37 schemas (kubernetes-validate, strict: unknown fields fail); the CRD kinds it cannot know (the
  ServiceMonitors) are checked by hand; what Helm POSTed is exactly what it rendered.
* the workloads are non-root with read-only roots, a writable /tmp, gRPC startup/liveness/readiness probes
  on the health service; every name an object refers to (claims, ConfigMaps, Secrets, service accounts,
  selectors, policies) resolves inside the rendering.
* each service's command line parses with that service's own argument parser, and the platform config the
  chart writes loads with ``s3core.config.load_config`` -- so the chart cannot pass a flag or a key the code
  does not know;
* the job templates parse as job specs and become Jobs (the controller backend's own ``job_manifest``) that
  validate; the controller's Role allows every Kubernetes API call its backend makes (recorded against a
  loopback endpoint);
* the values schema rejects typos and bad values; generated secrets survive an upgrade (``lookup``).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploykit import CHART, COMPONENTS, NAMESPACE, PROFILES, RELEASE, Rendered, RenderError, helm_python

K8S_VERSIONS = ("1.31.0", "1.37.0")  # the chart's kubeVersion floor, and the newest schemas we have
CRD_GROUPS = ("monitoring.coreos.com/",)
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _pod_specs(r: Rendered) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in r.docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- lint, schemas, what went over the wire -------------------------------------------------------------

def test_helm_lint_is_clean() -> None:
    import subprocess

    py = helm_python()
    proc = subprocess.run([str(py), str(Path(__file__).with_name("helm_render.py")), str(CHART), "--lint"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # helm-sdkpy returns the messages' severity and path but not their text; 1 = info (e.g. no icon),
    # 2 = warning, 3 = error.  Anything above info is a finding.
    findings = [m for m in result["Messages"] if m["Severity"] >= 2]
    assert result["TotalChartsLinted"] == 1
    assert not findings and not result["Errors"], f"helm lint: {findings} (run `make chart-lint`)"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_manifest_validates(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    _validate_all(profile_render(profile), profile)


def _validate_all(r: Rendered, profile: str) -> None:
    kinds = {d["kind"] for d in r.docs}
    assert {"Deployment", "Service", "StatefulSet", "PersistentVolumeClaim", "Secret", "ConfigMap", "NetworkPolicy",
            "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    names = set()
    for d in r.docs:
        key = (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
        assert key not in names, f"duplicate object {key}"
        names.add(key)
        assert DNS1123.match(d["metadata"]["name"]) and len(d["metadata"]["name"]) <= 253, key
        if d["apiVersion"].startswith(CRD_GROUPS):
            if d["kind"] == "PrometheusRule":
                _check_prometheusrule(d)
            else:
                _check_servicemonitor(d, r)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{profile}: {d['kind']}/{d['metadata']['name']} is invalid for Kubernetes {version}: "
                            f"{exc.message} at {'/'.join(map(str, exc.path))}")


def _check_prometheusrule(d: dict[str, Any]) -> None:
    """A monitoring.coreos.com/v1 PrometheusRule: its groups pass `promtool check rules` (Debian's prometheus)."""
    import shutil
    import subprocess
    import tempfile

    from deploykit import missing_tool

    assert set(d["spec"]) == {"groups"} and d["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    promtool = shutil.which("promtool")
    if not promtool:
        missing_tool("no promtool (Debian: apt-get install -y --no-install-recommends prometheus)")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": d["spec"]["groups"]}, f)
        f.flush()
        proc = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for g in d["spec"]["groups"]:
        for rule in g["rules"]:
            assert f'namespace="{NAMESPACE}"' in rule["expr"], rule["alert"]  # scoped to the release


def _check_servicemonitor(d: dict[str, Any], r: Rendered) -> None:
    """A monitoring.coreos.com/v1 ServiceMonitor (no schema here): well-formed and pointing at a real port."""
    assert d["apiVersion"] == "monitoring.coreos.com/v1" and d["kind"] == "ServiceMonitor", d["kind"]
    spec = d["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels"}
    sel = spec["selector"]["matchLabels"]
    targets = [s for s in r.of_kind("Service") if _matches(sel, s["metadata"]["labels"])
               and s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]]
    assert len(targets) == 1, f"ServiceMonitor {d['metadata']['name']} selects {len(targets)} Services"
    ports = {p["name"] for p in targets[0]["spec"]["ports"]}
    for ep in spec["endpoints"]:
        assert ep["port"] in ports and ep["path"] == "/metrics" and ep["scheme"] == "http"
        assert re.fullmatch(r"[0-9]+[smh]", ep["interval"]) and re.fullmatch(r"[0-9]+[smh]", ep["scrapeTimeout"])


@pytest.mark.parametrize("profile", list(PROFILES))
def test_helm_sent_what_it_rendered(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render(profile)

    def key(o: dict[str, Any]) -> tuple[str, str, str]:
        return o["apiVersion"], o["kind"], o["metadata"]["name"]

    assert sorted(map(key, r.objects)) == sorted(map(key, r.docs))
    sent = {key(o): o for o in r.objects}
    for d in r.docs:
        o = sent[key(d)]
        # Helm adds its ownership annotations; everything else arrives as rendered
        annotations = dict(o["metadata"].get("annotations") or {})
        assert annotations.pop("meta.helm.sh/release-name") == RELEASE
        assert annotations.pop("meta.helm.sh/release-namespace") == NAMESPACE
        assert annotations == (d["metadata"].get("annotations") or {})
        assert {k: v for k, v in o.items() if k != "metadata"} == {k: v for k, v in d.items() if k != "metadata"}


# --- workloads ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", list(PROFILES))
def test_workloads_are_locked_down_and_probed(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render(profile)
    pods = _pod_specs(r)
    assert len(pods) == len(COMPONENTS) + 1  # five services and Redis
    for where, pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is (where == f"Deployment/{RELEASE}-controller"), where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "limits" in c["resources"] and "memory" in c["resources"]["limits"], f"{where}: no memory limit"
        for c in pod["containers"]:
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp is not a writable emptyDir"
    for component in COMPONENTS:
        dep = r.deployment(component)
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": grpc_port, "service": ""}, f"{component} {probe}"
        # liveness: the process answers, whatever its dependencies (test_chart_semantics.py)
        http_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": http_port}, component
        # the service binds every address inside the pod, on the ports the probes and Services use
        args = c["args"]
        assert "--host=0.0.0.0" in args and f"--port={grpc_port}" in args
        assert c["command"] == [f"s3-{component}"]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_references_resolve(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    _check_references(profile_render(profile))


def _check_references(r: Rendered) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    workloads = r.of_kind("Deployment") + r.of_kind("StatefulSet")
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for w in workloads:
        assert _matches(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        pod = w["spec"]["template"]["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in names, pod["serviceAccountName"]
        for v in pod["volumes"]:
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in names
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = r.get("Secret", ref["name"])
                    assert ref["key"] in secret["data"], f"{ref} not in Secret {ref['name']}"
            mounted = {m["name"] for m in c["volumeMounts"]}
            claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
            assert mounted <= {v["name"] for v in pod["volumes"]} | claims
    for svc in r.of_kind("Service"):
        sel = svc["spec"]["selector"]
        matched = [lb for lb in pod_labels if _matches(sel, lb)]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} workloads"
    for kind in ("NetworkPolicy", "PodDisruptionBudget"):
        for o in r.of_kind(kind):
            sel = o["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"]["matchLabels"]
            assert sum(_matches(sel, lb) for lb in pod_labels) == 1, f"{kind} {o['metadata']['name']}"
    for rb in r.of_kind("RoleBinding") + r.of_kind("ClusterRoleBinding"):
        assert (rb["roleRef"]["kind"], rb["roleRef"]["name"]) in names
        for s in rb["subjects"]:
            assert ("ServiceAccount", s["name"]) in names


def test_network_policies_admit_only_the_platform(profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render("default")
    policies = {p["metadata"]["name"]: p for p in r.of_kind("NetworkPolicy")}
    assert set(policies) == {f"{RELEASE}-{c}" for c in (*COMPONENTS, "redis")}
    worker_labels = {"app.kubernetes.io/name": "s3-job", "app.kubernetes.io/part-of": "s3",
                     "app.kubernetes.io/component": "eval"}
    own_labels = r.deployment("searcher")["spec"]["template"]["metadata"]["labels"]
    stranger = {"app": "something-else"}
    for name, p in policies.items():
        assert p["spec"]["policyTypes"] == ["Ingress"]
        rules = p["spec"]["ingress"]
        main = rules[0]
        peers = [f["podSelector"]["matchLabels"] for f in main["from"] if "podSelector" in f]
        assert any(_matches(s, worker_labels) for s in peers), name  # the controller's job pods
        assert any(_matches(s, own_labels) for s in peers), name  # this release's pods
        assert not any(_matches(s, stranger) for s in peers), name
        assert all("namespaceSelector" not in f for f in main["from"]), name  # same namespace only
        if name.endswith("-redis"):
            assert [pt["port"] for pt in main["ports"]] == ["redis"]
        else:
            assert {pt["port"] for pt in main["ports"]} == {"grpc", "http"}
            # the metrics scrapers reach the HTTP port only
            (metrics,) = rules[1:]
            assert [pt["port"] for pt in metrics["ports"]] == ["http"]
            assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}]
    # the job pods the controller's backend creates carry those labels
    from s3core.jobs.backends.kubernetes import KubeSettings, job_manifest
    from s3core.jobs.model import JobRecord
    from s3core.jobs.spec import parse_spec

    job = job_manifest(JobRecord(id="eval-1", kind="eval", attempts=1),
                       parse_spec("kind: eval\njob: {questions: [q.jsonl], methods: [naive-rag], index: i, out: o}\n"),
                       KubeSettings(image="x", redis_url="redis://r:6379/0"))
    assert _matches(peers[1], job["spec"]["template"]["metadata"]["labels"])


# --- GPU / CPU profiles ----------------------------------------------------------------------------------

def test_gpu_profile_puts_models_on_gpus(profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render("gpu")
    # GPUs per pod: the generator's two tensor-parallel ranks, one for the searcher, the learner and the retriever
    gpus = {"generator": 2, "searcher": 1, "learner": 1, "retriever": 1}
    for component, n in gpus.items():
        pod = r.deployment(component)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == n, component
        assert c["resources"]["requests"]["nvidia.com/gpu"] == n, component
        assert c["image"].startswith("s3-platform-cuda:"), component
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true", component
        if component != "retriever":
            assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"]), component
    # both generator ranks on one node with two GPUs or more
    (term,) = r.deployment("generator")["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["1"]} in term["matchExpressions"]
    gen = r.deployment("generator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--backend=vllm" in gen and "--model=Qwen/Qwen2.5-14B-Instruct" in gen
    srch = r.deployment("searcher")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model=Qwen/Qwen2.5-7B-Instruct" in srch and f"--retriever={RELEASE}-retriever:50051" in srch
    # the checkpoint volume is shared by learner (read-write) and searcher (read-only): ReadWriteMany
    pvc = r.get("PersistentVolumeClaim", f"{RELEASE}-checkpoints")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {c: {m["name"]: m for m in r.deployment(c)["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
              for c in ("learner", "searcher")}
    assert "readOnly" not in mounts["learner"]["checkpoints"] and mounts["searcher"]["checkpoints"]["readOnly"]
    assert len(r.of_kind("ServiceMonitor")) == len(COMPONENTS)
    for sm in r.of_kind("ServiceMonitor"):
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # additionalLabels
    env = {e["name"]: e.get("value") for e in r.deployment("generator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "HF_HUB_OFFLINE" not in env  # models come from the hub into the model cache


@pytest.mark.parametrize("profile", ["default", "cpu"])
def test_cpu_profiles_ask_for_no_gpu(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render(profile)
    text = json.dumps(r.docs)
    assert "nvidia.com/gpu\": " not in text.replace('"gpu_resource": "nvidia.com/gpu"', "")
    for _, pod in _pod_specs(r):
        for c in pod["containers"]:
            assert "cuda" not in c["image"]
    assert not r.of_kind("ServiceMonitor")


# --- sharded retrievers -----------------------------------------------------------------------------------

SHARDS = 4


@pytest.fixture(scope="module")
def sharded(render: Callable[..., Rendered]) -> Rendered:
    """The GPU profile with wiki-18 in four retriever shards."""
    return render(values_files=PROFILES["gpu"], set_values={"retriever": {"shards": SHARDS}})


def _shard_names() -> list[str]:
    return [f"{RELEASE}-retriever-{i}" for i in range(SHARDS)]


def test_sharded_gpu_profile_validates(sharded: Rendered) -> None:
    _validate_all(sharded, f"gpu + retriever.shards={SHARDS}")
    _check_references(sharded)  # every Service, PDB and NetworkPolicy selects exactly one workload's pods
    kinds = ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor")
    for kind in kinds:
        names = {d["metadata"]["name"] for d in sharded.of_kind(kind)}
        assert set(_shard_names()) <= names, f"{kind}: {sorted(names)}"
        assert f"{RELEASE}-retriever" not in names, f"{kind}: an unsharded retriever is left"
    assert len(sharded.of_kind("Deployment")) == len(COMPONENTS) - 1 + SHARDS
    # each shard's objects select that shard's pods and no other
    for i, name in enumerate(_shard_names()):
        labels = sharded.get("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels["s3-platform/shard"] == str(i) and labels["app.kubernetes.io/component"] == "retriever"
        svc = sharded.get("Service", name)
        assert _matches(svc["spec"]["selector"], labels)
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 50051, "http": 8051}
        for kind, path in (("PodDisruptionBudget", ("selector",)), ("NetworkPolicy", ("podSelector",)),
                           ("ServiceMonitor", ("selector",))):
            sel = sharded.get(kind, name)["spec"]
            for key in path:
                sel = sel[key]
            assert _matches(sel["matchLabels"], labels), (kind, name)
            others = [sharded.get("Deployment", o)["spec"]["template"]["metadata"]["labels"]
                      for o in _shard_names() if o != name]
            assert not any(_matches(sel["matchLabels"], o) for o in others), (kind, name)
        assert sharded.get("PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1
    # the searcher (and the job templates) may reach every shard: the shard pods carry the platform's labels
    searcher_labels = sharded.deployment("searcher")["spec"]["template"]["metadata"]["labels"]
    for name in _shard_names():
        peers = sharded.get("NetworkPolicy", name)["spec"]["ingress"][0]["from"]
        assert any(_matches(p["podSelector"]["matchLabels"], searcher_labels) for p in peers if "podSelector" in p)


def test_each_shard_serves_its_own_shard_directory(sharded: Rendered) -> None:
    parser = _parser("retriever")
    for i, name in enumerate(_shard_names()):
        pod = sharded.get("Deployment", name)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        shard_dir = f"/data/indexes/wiki18-e5/shard-{i:05d}-of-{SHARDS:05d}"
        ns = parser.parse_args(c["args"])
        assert ns.index == [shard_dir], (name, ns.index)
        (wait,) = pod["initContainers"]
        assert wait["args"][-1] == shard_dir  # waits for this shard's manifest, not shard 0's
        data = next(m for m in c["volumeMounts"] if m["name"] == "data")
        assert data["mountPath"] == "/data" and data["readOnly"] is True
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["image"].startswith("s3-platform-cuda:")
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": 50051, "service": ""}, (name, probe)
        assert {"--port=50051", "--http-port=8051", "--host=0.0.0.0"} <= set(c["args"])


def test_clients_get_every_shard_address(sharded: Rendered) -> None:
    from s3core.jobs.spec import parse_spec

    want = ",".join(f"{n}:50051" for n in _shard_names())
    (c,) = sharded.deployment("searcher")["spec"]["template"]["spec"]["containers"]
    ns = _parser("searcher").parse_args(c["args"])
    assert ns.retriever == want
    services = {s["metadata"]["name"]: s for s in sharded.of_kind("Service")}
    for addr in ns.retriever.split(","):
        host, port = addr.split(":")
        assert any(p["port"] == int(port) for p in services[host]["spec"]["ports"]), addr
    templates = sharded.get("ConfigMap", f"{RELEASE}-job-templates")["data"]
    assert parse_spec(templates["eval.yaml"]).args.retriever == want
    assert parse_spec(templates["precompute.yaml"]).args.retriever == want
    assert parse_spec(templates["train.yaml"]).config.train.retriever == want
    assert want in sharded.notes and f"shard-0000i-of-{SHARDS:05d}" in sharded.notes


def test_one_shard_is_the_plain_retriever(render: Callable[..., Rendered],
                                          profile_render: Callable[[str], Rendered]) -> None:
    """shards: 1 renders exactly what the chart rendered before shards existed: no shard label, no suffix."""
    one = render(values_files=PROFILES["gpu"], set_values={"retriever": {"shards": 1}})
    def objects(r: Rendered) -> list[dict[str, Any]]:
        return [d for d in r.docs if d["kind"] != "Secret"]  # generated tokens differ between renderings

    assert objects(one) == objects(profile_render("gpu"))
    dep = one.deployment("retriever")
    assert "s3-platform/shard" not in dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][-2] == "--index=/data/indexes/wiki18-e5"


# --- the code accepts what the chart passes ------------------------------------------------------------

def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` in container args, as the kubelet expands it from the container's env."""
    return [re.sub(r"\$\(([A-Z_]+)\)", lambda m: env[m.group(1)], a) for a in args]


def _parser(component: str) -> Any:
    import importlib

    return importlib.import_module(f"s3_{component}.server").build_parser()


@pytest.mark.parametrize("profile", list(PROFILES))
def test_service_flags_and_config_parse(profile: str, profile_render: Callable[[str], Rendered], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from s3core.config import load_config

    r = profile_render(profile)
    cfg_text = r.get("ConfigMap", f"{RELEASE}-config")["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(cfg_text)
    cfg = load_config(tmp_path / "config.yaml")  # unknown keys or impossible values raise
    assert cfg.searcher.checkpoint_dir == "/checkpoints"
    for component in COMPONENTS:
        (c,) = r.deployment(component)["spec"]["template"]["spec"]["containers"]
        args = _expand(c["args"], {e["name"]: e.get("value", f"<{e['name']}>") for e in c["env"]})
        try:
            ns = _parser(component).parse_args(args)
        except SystemExit:
            pytest.fail(f"{profile}: s3-{component} rejects its flags: {shlex.join(args)}")
        assert ns.config == "/etc/s3/config.yaml"
        load_config(tmp_path / "config.yaml", ns.preset)
    if profile == "gpu":
        assert cfg.generator.backend == "vllm" and cfg.search.retrieve_k == 8 and cfg.rl.lora_rank == 16
        assert cfg.generator.tensor_parallel_size == 2 and cfg.searcher.tensor_parallel_size == 1


@pytest.mark.parametrize("profile", list(PROFILES))
def test_job_templates_become_valid_jobs(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    from s3core.jobs.backends.kubernetes import KubeSettings, job_manifest
    from s3core.jobs.model import JobRecord
    from s3core.jobs.spec import parse_spec

    r = profile_render(profile)
    templates = r.get("ConfigMap", f"{RELEASE}-job-templates")["data"]
    assert set(templates) == {f"{k}.yaml" for k in ("index", "precompute", "eval", "train", "infer")}
    (c,) = r.deployment("controller")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "redis://from-secret") for e in c["env"]}
    args = _parser("controller").parse_args(_expand(c["args"], env))
    assert args.backend == "kubernetes"
    # the controller's settings, as its server builds them from these flags
    settings = KubeSettings(namespace=args.k8s_namespace, image=args.k8s_image, redis_url=args.k8s_redis_url or "",
                            redis_secret=args.k8s_redis_secret, auth_secret=args.k8s_auth_secret,
                            store_namespace=args.namespace, service_account=args.k8s_service_account,
                            heartbeat_interval=args.heartbeat_interval)
    assert ("ServiceAccount", settings.service_account) in {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    redis_secret, key = settings.redis_secret.split(":")
    assert key in r.get("Secret", redis_secret)["data"]
    for name, text in templates.items():
        spec = parse_spec(text)  # raises ConfigError naming the field
        assert spec.kind == name.removesuffix(".yaml")
        assert spec.kubernetes.pvc == f"{RELEASE}-data" and spec.kubernetes.mount_path == "/data"
        job = job_manifest(JobRecord(id=f"{spec.kind}-0a1b2c3d", kind=spec.kind, attempts=1, max_attempts=2),
                           spec, settings)
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(job, version, strict=True)
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == settings.service_account
        # jobs and services share the data volume: the same user and group write and read it
        for component in ("retriever", "learner", "searcher"):
            svc = r.deployment(component)["spec"]["template"]["spec"]["securityContext"]
            for k in ("runAsUser", "fsGroup"):
                assert svc[k] == pod["securityContext"][k], (component, k)
        assert pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-data"
    train = parse_spec(templates["train.yaml"])
    assert train.config.train.learner == f"{RELEASE}-learner:50054"
    assert train.config.train.searcher == f"{RELEASE}-searcher:50053"


def test_controller_rbac_allows_every_call_its_backend_makes(profile_render: Callable[[str], Rendered],
                                                             tmp_path: Path) -> None:
    """The backend runs against the recording endpoint; each request becomes (apiGroup, resource, verb), and
    the rendered Role (namespaced) or ClusterRole (the CRD read) must allow it."""
    import importlib.util

    from kubernetes import config as kconfig

    from s3core.jobs.backends.kubernetes import KubernetesBackend, KubeSettings, object_name
    from s3core.jobs.model import JobRecord
    from s3core.jobs.spec import parse_spec

    spec_obj = importlib.util.spec_from_file_location("helm_render", Path(__file__).with_name("helm_render.py"))
    assert spec_obj and spec_obj.loader
    helm_render = importlib.util.module_from_spec(spec_obj)
    spec_obj.loader.exec_module(helm_render)
    helm_render.RESOURCES["ray.io/v1"] = [("rayjobs", "RayJob", True)]

    api = helm_render.RecordingAPI("1.31.0")
    try:
        (tmp_path / "kubeconfig").write_text(helm_render._kubeconfig(api.url, NAMESPACE))
        client = kconfig.new_client_from_config(config_file=str(tmp_path / "kubeconfig"))
        backend = KubernetesBackend(KubeSettings(namespace=NAMESPACE, image="s3-platform:t", redis_secret="s3-redis:url",
                                                 auth_secret="s3-auth:token"), api_client=client)
        spec = parse_spec("kind: eval\njob: {questions: [q.jsonl], methods: [naive-rag], index: i, out: o}\n")
        job = JobRecord(id="eval-0000beef", kind="eval", attempts=1)
        job.worker_ref = backend.launch(job, spec).ref
        name = object_name(job.id, 1)
        path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}"
        api.objects[path]["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "Boom"}]}
        assert not backend.check(job).alive  # reads the status, then lists the pods for reasons
        backend.stop(job)
        train = parse_spec("kind: train\ntrain: {questions: [t.jsonl]}\njob: {index: i}\n"
                           "kubernetes: {ray_workers: 2}\n")
        tjob = JobRecord(id="train-0000beef", kind="train", attempts=1)
        backend.launch(tjob, train)  # asks whether the RayJob CRD exists (404 here: a plain Job)
        api.objects["/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayjobs.ray.io"] = {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "rayjobs.ray.io"}}
        backend._ray = None
        tjob.attempts = 2
        tjob.worker_ref = backend.launch(tjob, train).ref  # a RayJob now
        backend.check(tjob)
        backend.stop(tjob)
        requests = list(api.requests)
    finally:
        api.close()

    verbs = {"GET": "get", "POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}
    needed = set()
    for req in requests:
        where = helm_render.RecordingAPI._split(req["path"])
        assert where, req["path"]
        gv, ns, plural, obj, sub = where
        verb = verbs[req["method"]] if obj or req["method"] != "GET" else "list"
        group = gv.split("/")[0] if "/" in gv else ""
        needed.add((group, plural + (f"/{sub}" if sub else ""), verb, bool(ns)))
    assert ("batch", "jobs", "create", True) in needed and ("", "pods", "list", True) in needed
    assert ("ray.io", "rayjobs", "create", True) in needed
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "get", False) in needed

    r = profile_render("default")
    role = r.get("Role", f"{RELEASE}-controller")
    (cluster_role,) = r.of_kind("ClusterRole")

    def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
        return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
                   for rule in rules)

    for group, resource, verb, namespaced in sorted(needed):
        rules = role["rules"] if namespaced else cluster_role["rules"]
        assert allowed(rules, group, resource, verb), f"the controller may not {verb} {group}/{resource}"
    assert cluster_role["rules"][0]["resourceNames"] == ["rayjobs.ray.io"]  # nothing else cluster-wide
    assert allowed(role["rules"], "", "pods/log", "get")  # `kubectl logs` of a worker by the controller


# --- the rest of the objects ------------------------------------------------------------------------------

def test_redis_keeps_an_append_only_file(profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render("default")
    conf = r.get("ConfigMap", f"{RELEASE}-redis-config")["data"]["redis.conf"].splitlines()
    assert "appendonly yes" in conf and "appendfsync everysec" in conf and "dir /data" in conf
    assert "maxmemory-policy noeviction" in conf
    sts = r.get("StatefulSet", f"{RELEASE}-redis")
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    assert vct["metadata"]["name"] == "data" and vct["spec"]["resources"]["requests"]["storage"] == "8Gi"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    url = base64.b64decode(r.get("Secret", f"{RELEASE}-redis")["data"]["url"]).decode()
    assert url == f"redis://{RELEASE}-redis.{NAMESPACE}.svc:6379/0"


def test_generated_secrets_survive_an_upgrade(render: Callable[..., Rendered]) -> None:
    with_auth = {"redis": {"auth": {"enabled": True}}}
    first = render(set_values=with_auth)
    token = first.get("Secret", f"{RELEASE}-auth")["data"]["token"]
    password = first.get("Secret", f"{RELEASE}-redis")["data"]["password"]
    assert len(base64.b64decode(token)) == 48 and len(base64.b64decode(password)) == 32
    url = base64.b64decode(first.get("Secret", f"{RELEASE}-redis")["data"]["url"]).decode()
    assert url == f"redis://:{base64.b64decode(password).decode()}@{RELEASE}-redis.{NAMESPACE}.svc:6379/0"
    # an upgrade: the Secrets exist in the cluster (as Helm created them, with its ownership annotations);
    # the chart's lookup finds them and keeps the values
    existing = [o for o in first.objects if o["kind"] == "Secret"]
    assert len(existing) == 2
    again = render(set_values=with_auth, existing=existing)
    assert again.get("Secret", f"{RELEASE}-auth")["data"]["token"] == token
    assert again.get("Secret", f"{RELEASE}-redis")["data"]["password"] == password
    # the Redis server and its probes get the same password
    (c,) = again.get("StatefulSet", f"{RELEASE}-redis")["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in c["env"]} == {"REDIS_PASSWORD", "REDISCLI_AUTH"}
    assert c["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]


def test_existing_secrets_and_external_redis(render: Callable[..., Rendered]) -> None:
    r = render(set_values={"auth": {"existingSecret": "my-token", "existingSecretKey": "t"},
                           "redis": {"enabled": False, "external": {"existingSecret": "my-redis"}}})
    assert not r.of_kind("StatefulSet")
    assert {s["metadata"]["name"] for s in r.of_kind("Secret")} == set()
    (c,) = r.deployment("controller")["spec"]["template"]["spec"]["containers"]
    assert "--k8s-auth-secret=my-token:t" in c["args"] and "--k8s-redis-secret=my-redis:url" in c["args"]
    vol = next(v for v in r.deployment("retriever")["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth")
    assert vol["secret"] == {"secretName": "my-token", "defaultMode": 0o440, "items": [{"key": "t", "path": "token"}]}


@pytest.mark.parametrize("client_auth", [False, True])
def test_tls_mounts_the_secret_and_probes_over_http(client_auth: bool, render: Callable[..., Rendered]) -> None:
    r = render(set_values={"tls": {"enabled": True, "existingSecret": "s3-tls", "clientAuth": client_auth},
                           "controller": {"backend": "kubernetes"}})
    for doc in r.docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    for component in ("retriever", "generator", "searcher", "learner", "controller"):
        pod = r.deployment(component)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert vol["secret"]["secretName"] == "s3-tls"
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var, key in (("S3_TLS_CERT_FILE", "tls.crt"), ("S3_TLS_KEY_FILE", "tls.key"), ("S3_TLS_CA_FILE", "ca.crt")):
            assert env[var] == f"{mount['mountPath']}/{key}", (component, var)
        assert ("S3_TLS_CLIENT_CA_FILE" in env) is client_auth and ("S3_TLS_CLIENT_CERT_FILE" in env) is client_auth
        http = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "grpc" not in c[probe], (component, probe)  # kubelet's grpc probes cannot speak TLS
            path = "/livez" if probe == "livenessProbe" else "/healthz"
            assert c[probe]["httpGet"] == {"path": path, "port": http}
    (c,) = r.deployment("controller")["spec"]["template"]["spec"]["containers"]
    args = _parser("controller").parse_args(_expand(c["args"], {e["name"]: "x" for e in c["env"]}))
    assert args.k8s_tls_secret == "s3-tls" and args.k8s_tls_client_auth is client_auth


def test_dashboards_ship_as_labelled_configmaps(profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render("default")
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    cms = [c for c in r.of_kind("ConfigMap") if "-dashboard-" in c["metadata"]["name"]]
    assert sorted(k for c in cms for k in c["data"]) == files and len(files) == 6
    for c in cms:
        assert c["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert c["metadata"]["annotations"]["grafana_folder"] == "s3"
        (text,) = c["data"].values()
        assert json.loads(text)["uid"].startswith("s3-")


def test_notes_tell_how_to_reach_the_controller(profile_render: Callable[[str], Rendered]) -> None:
    notes = profile_render("default").notes
    assert f"port-forward svc/{RELEASE}-controller 50055:50055" in notes
    assert f"get secret {RELEASE}-auth" in notes and "s3 jobs submit index.yaml" in notes


@pytest.mark.parametrize(("values", "needle"), [
    ({"retriever": {"replica": 2}}, "replica"),  # a typo
    ({"generator": {"backend": "tgi"}}, "backend"),
    ({"generator": {"backend": "openai"}}, "baseUrl"),  # openai needs an endpoint
    ({"learner": {"replicas": 2}}, "replicas"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"persistence": {"checkpoints": {"accessModes": ["ReadWriteSometimes"]}}}, "accessModes"),
    ({"serviceMonitor": {"interval": "30 seconds"}}, "interval"),
    ({"controller": {"heartbeatInterval": 40, "heartbeatTimeout": 60}}, "heartbeatInterval"),
    ({"redis": {"enabled": False}}, "redis.external.url"),
    ({"retriever": {"shards": 0}}, "shards"),
    ({"tls": {"enabled": True}}, "tls.existingSecret"),
    ({"retriever": {"shards": "4"}}, "shards"),
    # vLLM: one tensor-parallel rank per GPU (config.generator.tensor_parallel_size defaults to 1)
    ({"generator": {"backend": "vllm", "resources": {"limits": {"nvidia.com/gpu": 2}}}}, "tensor_parallel_size"),
    ({"config": {"searcher": {"tensor_parallel_size": 2}},
      "searcher": {"backend": "vllm", "resources": {"limits": {"nvidia.com/gpu": 1}}}}, "tensor_parallel_size"),
])
def test_bad_values_fail_with_a_message(values: dict[str, Any], needle: str,
                                        render: Callable[..., Rendered]) -> None:
    with pytest.raises(RenderError) as err:
        render(set_values=values)
    assert needle in str(err.value), str(err.value)


def test_values_files_have_the_profiles_the_docs_promise() -> None:
    for files in PROFILES.values():
        for f in files:
            assert (CHART / f).is_file()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"]), "values.yaml and values.schema.json disagree on the keys"
    # every top-level key, and every key of a component block, carries a "# --" comment on the line above
    lines = (CHART / "values.yaml").read_text().splitlines()
    block = ""
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        depth = len(m.group(1))
        if depth == 0:
            block = m.group(2)
        if depth == 0 or (depth == 2 and block in COMPONENTS):
            assert lines[i - 1].lstrip().startswith("#"), f"values.yaml:{i + 1}: {m.group(2)} has no comment"
