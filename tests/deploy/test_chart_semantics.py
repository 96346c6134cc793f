"""What an API server or a scheduler does with the chart's objects, beyond their schema (tests/deploy/apirules.py):
every kind rendered over the default, CPU and GPU values (and the sharded, TLS and Redis-auth variants, the
`helm test` hooks and the Jobs the controller makes from the job templates) obeys the API server's semantic rules.
Plus the scheduling and lifecycle choices of issue 16: GPU nodes chosen by labels, selectors scoped to the
release, data kept on uninstall, liveness independent of Redis (against a real controller and a real Redis), the
index job building the index the retriever serves, and the `helm test` script run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apirules
import kubernetes_validate
import pytest
from deploykit import CHART, COMPONENTS, PROFILES, RELEASE, REPO, Rendered, RenderError

VARIANTS: dict[str, tuple[list[str], dict[str, Any] | None]] = {
    "gpu-sharded": (PROFILES["gpu"], {"retriever": {"shards": 4, "replicas": 2}}),
    "mtls-redis-auth": ([], {"tls": {"enabled": True, "existingSecret": "s3-tls", "clientAuth": True},
                             "redis": {"auth": {"enabled": True}}}),
    "local-backend": (PROFILES["cpu"], {"controller": {"backend": "local"},
                                        "generator": {"pdb": {"minAvailable": 0}},
                                        "persistence": {"models": {"keep": False, "annotations": {"a": "b"}}}}),
    # the GPU profile with a product pinned and a node affinity of the user's own (two pools)
    "gpu-pinned": (PROFILES["gpu"], {"learner": {"gpuNode": {"products": ["NVIDIA-H200"]}, "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["b"]}]}]}}}}}),
    # the generator's model on the vLLM OpenAI server (test_chart_vllm_server.py checks the wiring)
    "gpu-vllm-server": ([*PROFILES["gpu"], "values-vllm-server.yaml"], None),
}


def _job_manifests(r: Rendered) -> list[dict[str, Any]]:
    """The Jobs the controller's kubernetes backend builds from each job template of the rendering."""
    from s3core.jobs.backends.kubernetes import KubeSettings, job_manifest
    from s3core.jobs.model import JobRecord
    from s3core.jobs.spec import parse_spec

    try:
        templates = r.get("ConfigMap", f"{RELEASE}-job-templates")["data"]
    except KeyError:
        return []
    settings = KubeSettings(image="s3-platform:t", redis_secret=f"{RELEASE}-redis:url",
                            auth_secret=f"{RELEASE}-auth:token")
    out = []
    for text in templates.values():
        spec = parse_spec(text)
        if spec.kubernetes.ray_workers > 1:
            continue
        out.append(job_manifest(JobRecord(id=f"{spec.kind}-0a1b2c3d", kind=spec.kind, attempts=1), spec, settings))
    return out


def _assert_rules(r: Rendered, label: str) -> None:
    docs = r.docs + r.hooks
    problems = apirules.check(docs + _job_manifests(r))
    assert not problems, f"{label}: " + "\n".join(problems)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_api_server_rules_hold_for_every_profile(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render(profile)
    kinds = {d["kind"] for d in r.docs + r.hooks}
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy", "Pod"} <= kinds
    _assert_rules(r, profile)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_api_server_rules_hold_for_the_variants(variant: str, render: Callable[..., Rendered]) -> None:
    files, values = VARIANTS[variant]
    _assert_rules(render(values_files=files, set_values=values), variant)


def test_gpu_profile_deployments_are_acceptable_to_the_api_server(profile_render: Callable[[str], Rendered]) -> None:
    """The defect of issue 16: values-gpu.yaml's {type: Recreate} merged with the default rollingUpdate block."""
    r = profile_render("gpu")
    for component in ("generator", "searcher", "learner"):
        assert r.deployment(component)["spec"]["strategy"] == {"type": "Recreate"}, component
    assert r.deployment("retriever")["spec"]["strategy"]["type"] == "RollingUpdate"
    for component in ("generator", "searcher", "learner", "retriever"):
        (c,) = r.deployment(component)["spec"]["template"]["spec"]["containers"]
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus and gpus >= 1, component


# --- the checker catches what it claims to ---------------------------------------------------------------

def _deployment() -> dict[str, Any]:
    labels = {"app": "x"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": dict(labels)}, "spec": {
        "replicas": 2, "selector": {"matchLabels": dict(labels)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": dict(labels)}, "spec": {
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "i", "ports": [{"name": "grpc", "containerPort": 50051},
                                                                  {"name": "http", "containerPort": 8051}],
                            "env": [{"name": "A_B", "value": "1"}],
                            "livenessProbe": {"httpGet": {"path": "/metrics", "port": 8051}},
                            "readinessProbe": {"grpc": {"port": 50051}},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 1},
                                          "limits": {"memory": "1024Mi", "nvidia.com/gpu": 1}}}]}}}}


def _pdb(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, **spec}}


def _container(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]["containers"][0]


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "recreate-with-rollingupdate": (lambda d: d["spec"]["strategy"].update(type="Recreate"),
                                    "may not be specified when strategy type is 'Recreate'"),
    "surge-and-unavailable-0": (lambda d: d["spec"]["strategy"]["rollingUpdate"].update(maxSurge=0),
                                "may not both be 0"),
    "selector-not-labels": (lambda d: d["spec"]["selector"]["matchLabels"].update(tier="web"),
                            "does not match the template labels"),
    "probe-port-missing": (lambda d: _container(d)["livenessProbe"]["httpGet"].update(port=9999),
                           "is no port the container declares"),
    "probe-port-name-missing": (lambda d: _container(d)["readinessProbe"].update(
        grpc=None, httpGet={"path": "/", "port": "metrics"}) or _container(d)["readinessProbe"].pop("grpc"),
        "'metrics' is no port name"),
    "mount-unknown-volume": (lambda d: _container(d)["volumeMounts"].append({"name": "data", "mountPath": "/data"}),
                             "volumeMount 'data' names no volume"),
    "bad-env-name": (lambda d: _container(d)["env"].append({"name": "9-LIVES", "value": "x"}),
                     "invalid env var name '9-LIVES'"),
    "request-over-limit": (lambda d: _container(d)["resources"]["requests"].update(memory="2Gi"),
                           "requests memory 2Gi > limits 1024Mi"),
    "gpu-request-not-limit": (lambda d: _container(d)["resources"]["limits"].update({"nvidia.com/gpu": 2}),
                              "must equal limits"),
    "gpu-request-without-limit": (lambda d: _container(d)["resources"]["limits"].pop("nvidia.com/gpu"),
                                  "must also be in limits"),
    "fractional-gpu": (lambda d: [_container(d)["resources"][k].update({"nvidia.com/gpu": "500m"})
                                  for k in ("requests", "limits")], "must be a whole number"),
    "long-port-name": (lambda d: _container(d)["ports"][0].update(name="grpc-and-more-ports"),
                       "not an IANA service name"),
    "bad-label-value": (lambda d: d["metadata"]["labels"].update(version="v1 beta"), "invalid value 'v1 beta'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_rules_catch_a_broken_object(case: str) -> None:
    d = _deployment()
    assert apirules.check([d]) == []  # the object is fine before
    mutate, needle = BROKEN[case]
    mutate(d)
    problems = apirules.check([d])
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize(("spec", "needle"), [
    ({"minAvailable": 2}, "no voluntary eviction"),  # 2 replicas
    ({"minAvailable": "100%"}, "no voluntary eviction"),
    ({"maxUnavailable": 0}, "blocks every voluntary eviction"),
    ({"maxUnavailable": 1, "minAvailable": 1}, "exactly one"),
])
def test_the_rules_catch_a_pdb_that_blocks_drains(spec: dict[str, Any], needle: str) -> None:
    assert apirules.check([_deployment(), _pdb(maxUnavailable=1)]) == []
    assert apirules.check([_deployment(), _pdb(minAvailable=1)]) == []
    problems = apirules.check([_deployment(), _pdb(**spec)])
    assert any(needle in p for p in problems), problems


def test_quantities_parse_like_the_api_server() -> None:
    q = apirules.quantity
    assert q("500m") * 2 == q("1") and q("1Gi") == q("1024Mi") and q("1e3") == q("1k") and q(8) == 8
    assert q("1.5Gi") == 1.5 * 2**30
    with pytest.raises(ValueError):
        q("1 Gi")


# --- scheduling -------------------------------------------------------------------------------------------

def _node_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution",
                                                               {}).get("nodeSelectorTerms", [])


def _schedulable(pod: dict[str, Any], node_labels: dict[str, str]) -> bool:
    """Would the scheduler's node selector and required node affinity admit a node with these labels?"""
    if not apirules._matches(pod.get("nodeSelector") or {}, node_labels):
        return False
    terms = _node_terms(pod)

    def ok(e: dict[str, Any]) -> bool:
        v = node_labels.get(e["key"])
        if e["operator"] == "In":
            return v in e["values"]
        if e["operator"] == "Gt":
            return v is not None and int(v) > int(e["values"][0])
        if e["operator"] == "Exists":
            return v is not None
        raise AssertionError(e)

    return not terms or any(all(ok(e) for e in t.get("matchExpressions", [])) for t in terms)


# GPU feature discovery's labels on a few real node types (nvidia.com/gpu.memory is in MiB)
NODES = {
    "8xH100": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "8", "nvidia.com/gpu.memory": "81559",
               "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "8xH200": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "8", "nvidia.com/gpu.memory": "143771",
               "nvidia.com/gpu.product": "NVIDIA-H200"},
    "4xA100-80": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "4", "nvidia.com/gpu.memory": "81920",
                  "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    "4xL40S": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "4", "nvidia.com/gpu.memory": "46068",
               "nvidia.com/gpu.product": "NVIDIA-L40S"},
    "1xA10": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "23028",
              "nvidia.com/gpu.product": "NVIDIA-A10"},
    "cpu": {"kubernetes.io/os": "linux"},
}


def test_gpu_nodes_are_chosen_by_memory_and_count_not_by_product(profile_render: Callable[[str], Rendered],
                                                               render: Callable[..., Rendered]) -> None:
    r = profile_render("gpu")
    pods = {c: r.deployment(c)["spec"]["template"]["spec"] for c in ("retriever", "generator", "searcher", "learner")}
    fits = {c: {n for n, labels in NODES.items() if _schedulable(p, labels)} for c, p in pods.items()}
    assert fits["learner"] == {"8xH100", "8xH200", "4xA100-80"}  # 80 GB-class, any product
    assert fits["searcher"] == {"8xH100", "8xH200", "4xA100-80"}
    assert fits["generator"] == {"8xH100", "8xH200", "4xA100-80", "4xL40S"}  # two GPUs of >= 40 GB on one node
    assert fits["retriever"] == set(NODES) - {"cpu"}
    assert "nvidia.com/gpu.product" not in json.dumps(pods)
    # the product stays available as an option; a user's own node affinity keeps its terms (ORed), and each
    # gets the GPU requirements (ANDed)
    pinned = render(*VARIANTS["gpu-pinned"])
    learner = pinned.deployment("learner")["spec"]["template"]["spec"]
    terms = _node_terms(learner)
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["a"], ["b"]]
    for t in terms:
        assert {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["78999"]} in t["matchExpressions"]
        assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H200"]} in t["matchExpressions"]
    assert {n for n, labels in NODES.items() if _schedulable(learner, {**labels, "pool": "b"})} == {"8xH200"}
    assert not any(_schedulable(learner, {**labels, "pool": "c"}) for labels in NODES.values())


def _pod_selectors(pod: dict[str, Any]) -> list[dict[str, str]]:
    out = [t["labelSelector"]["matchLabels"] for t in pod.get("topologySpreadConstraints", [])]
    for kind in ("podAffinity", "podAntiAffinity"):
        a = pod.get("affinity", {}).get(kind, {})
        out += [t["labelSelector"]["matchLabels"] for t in a.get("requiredDuringSchedulingIgnoredDuringExecution", [])]
        out += [t["podAffinityTerm"]["labelSelector"]["matchLabels"]
                for t in a.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    return out


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_spread_and_affinity_select_this_release_only(profile: str, render: Callable[..., Rendered],
                                                      profile_render: Callable[[str], Rendered]) -> None:
    """Two releases in one namespace: a release's spread constraints and pod affinities count its own pods only."""
    r = render(*VARIANTS["gpu-sharded"]) if profile == "gpu" else profile_render(profile)
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in r.of_kind("Deployment")}
    seen = 0
    for name, tpl in pods.items():
        for sel in _pod_selectors(tpl["spec"]):
            seen += 1
            own = [n for n, t in pods.items() if apirules._matches(sel, t["metadata"]["labels"])]
            assert own, f"{name}: {sel} selects none of this release's pods"
            for n in own:  # the same pods of another release are not selected
                other = {**pods[n]["metadata"]["labels"], "app.kubernetes.io/instance": "other"}
                assert not apirules._matches(sel, other), f"{name}: {sel} also selects release 'other'"
    assert seen >= (1 if profile == "cpu" else 2)


# --- lifecycle --------------------------------------------------------------------------------------------

def test_data_claims_survive_helm_uninstall(profile_render: Callable[[str], Rendered],
                                            render: Callable[..., Rendered]) -> None:
    for profile in PROFILES:
        claims = profile_render(profile).of_kind("PersistentVolumeClaim")
        assert {c["metadata"]["name"] for c in claims} == {f"{RELEASE}-{v}" for v in ("models", "data", "checkpoints")}
        for c in claims:
            assert c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", (profile, c["metadata"]["name"])
    r = render(*VARIANTS["local-backend"])
    assert r.get("PersistentVolumeClaim", f"{RELEASE}-models")["metadata"]["annotations"] == {"a": "b"}
    assert "keep" in json.dumps(r.get("PersistentVolumeClaim", f"{RELEASE}-data")["metadata"]["annotations"])


@pytest.mark.parametrize("profile", list(PROFILES))
def test_liveness_asks_only_the_process(profile: str, profile_render: Callable[[str], Rendered]) -> None:
    r = profile_render(profile)
    for component in COMPONENTS:
        (c,) = r.deployment(component)["spec"]["template"]["spec"]["containers"]
        http = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": http}, component
        assert "grpc" in c["readinessProbe"] and "grpc" in c["startupProbe"], component


def test_liveness_needs_no_token_when_metrics_are_protected(render: Callable[..., Rendered]) -> None:
    """S3_AUTH_METRICS true and a token: /metrics answers 401 without the token kubelet never sends, and the
    rendered liveness probe's path still answers 200 on a real side-server (a probe that always failed would
    restart-loop every pod)."""
    from s3core.rpc.http import SideServer

    r = render(set_values={"generator": {"extraEnv": [{"name": "S3_AUTH_METRICS", "value": "true"}]}})
    (c,) = r.deployment("generator")["spec"]["template"]["spec"]["containers"]
    assert {"name": "S3_AUTH_METRICS", "value": "true"} in c["env"]
    path = c["livenessProbe"]["httpGet"]["path"]
    assert not apirules.check(r.docs)
    server = SideServer("127.0.0.1", 0, lambda: False, token="tok", protect_metrics=True).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/metrics") == 401 and _get(base + "/healthz") == 503
        assert _get(base + path) == 200
    finally:
        server.stop()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_redis_outage_fails_readiness_not_liveness(profile_render: Callable[[str], Rendered],
                                                     tmp_path: Path) -> None:
    """The rendered controller's probes against a real controller whose real Redis goes away: the readiness
    probe (gRPC health / HTTP /healthz) fails, the liveness probe keeps passing -- the kubelet takes the pod out
    of its Service instead of restart-looping it."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from s3core.runtime.redis_server import RedisProcess

    (c,) = profile_render("default").deployment("controller")["spec"]["template"]["spec"]["containers"]
    live_path = c["livenessProbe"]["httpGet"]["path"]
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    ready = tmp_path / "ready.json"
    log = (tmp_path / "controller.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "s3_controller", "--redis-url", redis.url, "--backend", "local",
                             "--state-dir", str(tmp_path / "state"), "--host", "127.0.0.1", "--port", "0",
                             "--http-port", "0", "--reconcile-interval", "0.2", "--ready-file", str(ready)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "controller.log").read_text()
            time.sleep(0.1)
        time.sleep(0.2)
        info = json.loads(ready.read_text())
        base = f"http://127.0.0.1:{info['http_port']}"
        channel = grpc.insecure_channel(f"127.0.0.1:{info['grpc_port']}")
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING

        assert serving() and _get(base + "/healthz") == 200 and _get(base + live_path) == 200
        redis.kill()
        deadline = time.monotonic() + 30
        while serving():
            assert time.monotonic() < deadline, "the controller stayed SERVING without Redis"
            time.sleep(0.2)
        assert _get(base + "/healthz") == 503  # readiness (the TLS variant's probe) fails too
        for _ in range(5):  # and liveness keeps passing while Redis stays down
            assert _get(base + live_path) == 200
            time.sleep(0.2)
        assert proc.poll() is None
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        redis.stop()


def test_the_index_job_builds_the_index_the_retriever_serves(profile_render: Callable[[str], Rendered],
                                                             render: Callable[..., Rendered]) -> None:
    from s3core.jobs.spec import parse_spec

    for profile, backend, encoder in (("default", "bm25", ""), ("cpu", "bm25", ""),
                                      ("gpu", "dense", "intfloat/e5-base-v2")):
        r = profile_render(profile)
        spec = parse_spec(r.get("ConfigMap", f"{RELEASE}-job-templates")["data"]["index.yaml"])
        (c,) = r.deployment("retriever")["spec"]["template"]["spec"]["containers"]
        served = next(a for a in c["args"] if a.startswith("--index=")).removeprefix("--index=")
        assert "/data/" + spec.args.out == served, profile  # relative to the data volume the job works in
        assert (spec.args.backend, spec.args.encoder) == (backend, encoder), profile
        if profile == "gpu":
            assert spec.kubernetes.gpus == 1  # e5 encoding of wiki-18 on a GPU
            assert spec.config.retriever.device == "cuda"
    with pytest.raises(RenderError, match="encoder"):
        render(set_values={"retriever": {"indexBuild": {"backend": "dense"}}})


def test_only_a_real_model_judges(profile_render: Callable[[str], Rendered], tmp_path: Path) -> None:
    """The embedded 135M generator does not judge GenAcc (span match only); the GPU profile's 14B one does."""
    from s3core.config import load_config
    from s3core.jobs.spec import parse_spec

    for profile, judge in (("default", "none"), ("cpu", "none"), ("gpu", "model")):
        r = profile_render(profile)
        (tmp_path / f"{profile}.yaml").write_text(r.get("ConfigMap", f"{RELEASE}-config")["data"]["config.yaml"])
        assert load_config(tmp_path / f"{profile}.yaml").generator.judge == judge, profile
        templates = r.get("ConfigMap", f"{RELEASE}-job-templates")["data"]
        assert parse_spec(templates["eval.yaml"]).config.generator.judge == judge, profile


# --- helm test --------------------------------------------------------------------------------------------

def test_helm_test_hook_checks_every_service(profile_render: Callable[[str], Rendered],
                                             render: Callable[..., Rendered]) -> None:
    r = profile_render("default")
    by_kind = {d["kind"]: d for d in r.hooks}
    assert set(by_kind) == {"Pod", "ConfigMap"}
    for d in r.hooks:
        assert d["metadata"]["annotations"]["helm.sh/hook"] == "test"
        for version in ("1.31.0", "1.37.0"):
            kubernetes_validate.validate(d, version, strict=True)
    assert by_kind["ConfigMap"]["data"]["helm_test.py"] == (CHART / "files" / "helm_test.py").read_text()
    (c,) = by_kind["Pod"]["spec"]["containers"]
    health = sorted(a.split("=", 2)[1] for a in c["args"] if a.startswith("--health="))
    assert health == sorted(COMPONENTS)
    # the NetworkPolicies let the test pod in
    labels = by_kind["Pod"]["metadata"]["labels"]
    for p in r.of_kind("NetworkPolicy"):
        peers = [f["podSelector"]["matchLabels"] for f in p["spec"]["ingress"][0]["from"] if "podSelector" in f]
        assert any(apirules._matches(s, labels) for s in peers), p["metadata"]["name"]
    sharded = render(*VARIANTS["gpu-sharded"])
    (pod,) = [d for d in sharded.hooks if d["kind"] == "Pod"]
    args = pod["spec"]["containers"][0]["args"]
    want = ",".join(f"{RELEASE}-retriever-{i}:50051" for i in range(4))
    assert f"--health=retriever={want}" in args and f"--retriever={want}" in args
    off = render(set_values={"tests": {"enabled": False}})
    assert off.hooks == []


def test_helm_test_script_runs_against_real_services(profile_render: Callable[[str], Rendered], tmp_path: Path) -> None:
    """The rendered test pod's command, with its service addresses pointed at a real retriever (BM25) and a real
    generator (a tiny model) on loopback: passes; with one service down, fails naming it."""
    from s3core.config import GeneratorConfig
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model
    from s3core.runtime.local import LocalStack

    r = profile_render("default")
    (pod,) = [d for d in r.hooks if d["kind"] == "Pod"]
    script = tmp_path / "helm_test.py"
    script.write_text([d for d in r.hooks if d["kind"] == "ConfigMap"][0]["data"]["helm_test.py"])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": f"\"Doc {i}\"\n{t}"}) + "\n" for i, t in enumerate([
        "Paris is the capital and largest city of France.", "Berlin is the capital of Germany.",
        "The Loire is the longest river in France.", "Madrid is the capital of Spain."])))
    build_index(corpus, "bm25", tmp_path / "idx", show_progress=False)
    stack = LocalStack(tmp_path / "stack", detach=False)
    try:
        ret = stack.start_retriever(str(tmp_path / "idx")).address
        # a tiny Qwen2-style model keeps the generator's start-up short (any text answer passes the check)
        tiny = str(build_tiny_model(tmp_path / "tiny", seed=1))
        gen = stack.start_generator(GeneratorConfig(backend="hf", model=tiny)).address
        addr = {f"{RELEASE}-retriever:50051": ret, f"{RELEASE}-generator:50052": gen}
        args = []
        for a in pod["spec"]["containers"][0]["args"]:
            for k, v in addr.items():
                a = a.replace(k, v)
            if a.startswith("--health=") and not any(v in a for v in addr.values()):
                continue  # searcher, learner, controller: not started here
            args.append(a)
        env = {**os.environ, "S3_AUTH_TOKEN": "", "S3_AUTH_TOKEN_FILE": ""}
        ok = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "ok   search" in ok.stdout and "ok   answer" in ok.stdout and "all checks passed" in ok.stdout
        assert "first '0'" in ok.stdout  # the Paris passage ranks first for the chart's default question
        down = subprocess.run([sys.executable, str(script), *args, "--health=learner=127.0.0.1:1", "--timeout=2"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert down.returncode == 1 and "FAIL health learner 127.0.0.1:1: UNAVAILABLE" in down.stdout, down.stdout
        assert "FAILED health learner" in down.stdout
    finally:
        stack.down()


# --- chart documentation and schema -----------------------------------------------------------------------

def test_values_schema_is_generated_from_values_and_the_platform_config() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "helm" / "schema.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    for key in ("image", "config", "retriever", "persistence", "tests", "serviceMonitor"):
        assert schema["properties"][key].get("description"), key
    for component in COMPONENTS:
        props = schema["properties"][component]["properties"]
        undocumented = [k for k, v in props.items() if not v.get("description")]
        assert not undocumented, f"{component}: {undocumented}"
    from s3core.config import Config

    cfg = schema["properties"]["config"]
    assert set(cfg["properties"]) == {"presets", *Config.__dataclass_fields__}
    assert cfg["properties"]["generator"]["properties"]["backend"]["enum"] == ["hf", "openai", "vllm"]


@pytest.mark.parametrize(("config", "needle"), [
    ({"generator": {"bakend": "vllm"}}, "bakend"),  # a typo in a section
    ({"rl": {"algorithm": "dpo"}}, "algorithm"),  # not a choice of s3core.config
    ({"train": {"steps": "many"}}, "steps"),
    ({"presets": ["embeded"]}, "presets"),
    ({"retrievr": {}}, "retrievr"),
])
def test_bad_platform_config_fails_helm_install(config: dict[str, Any], needle: str,
                                                render: Callable[..., Rendered]) -> None:
    with pytest.raises(RenderError) as err:
        render(set_values={"config": config})
    assert needle in str(err.value), str(err.value)


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = (CHART / "values.yaml").read_text()
    import yaml

    top = yaml.safe_load(values)
    for key in top:
        assert f"`{key}" in readme, f"README.md does not mention {key}"
    for needle in ("helm test", "helm.sh/resource-policy", "gpuNode", "values-gpu.yaml", "delete pvc"):
        assert needle in readme, needle
