"""The generator on the standard vLLM OpenAI server (``vllmServer``, values-vllm-server.yaml), rendered by Helm:
a ``vllm serve`` Deployment with its Service, NetworkPolicy and ServiceMonitor; the generator service pointed at
it on its openai backend, with the platform token on both ends and no GPU of its own; the Generator dashboard's
vLLM panels selecting the label the ServiceMonitor puts on vLLM's targets; and the renderings the chart refuses.
(The API server's semantic rules over this profile: test_chart_semantics.py, variant gpu-vllm-server.)"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import apirules
import pytest
from deploykit import CHART, PROFILES, RELEASE, Rendered, RenderError

FILES = [*PROFILES["gpu"], "values-vllm-server.yaml"]
VLLM = f"{RELEASE}-vllm"


def _container(d: dict[str, Any]) -> dict[str, Any]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return c


def _env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def served(render: Callable[..., Rendered]) -> Rendered:
    return render(FILES)


def test_the_vllm_server_runs_vllm_serve_on_the_gpus(served: Rendered) -> None:
    assert apirules.check(served.docs) == []
    d = served.get("Deployment", VLLM)
    assert d["spec"]["strategy"] == {"type": "Recreate"}  # a surge pod would wait for the GPUs the old one holds
    pod = d["spec"]["template"]["spec"]
    c = _container(d)
    assert c["image"] == "vllm/vllm-openai:v0.11.0" and c["command"] == ["vllm", "serve"]
    assert c["args"][0] == "Qwen/Qwen2.5-14B-Instruct"
    assert {"--port=8000", "--served-model-name=Qwen/Qwen2.5-14B-Instruct", "--tensor-parallel-size=2",
            "--dtype=bfloat16", "--enable-prefix-caching"} <= set(c["args"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2 == c["resources"]["requests"]["nvidia.com/gpu"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {e["key"] for t in terms for e in t["matchExpressions"]} == {"nvidia.com/gpu.count", "nvidia.com/gpu.memory"}
    env = _env(c)
    assert env["HOME"] == "/tmp" and env["HF_HOME"] == "/models/hf" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": f"{RELEASE}-auth", "key": "token"}}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"tmp": "/tmp", "models": "/models", "dshm": "/dev/shm"}
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]


def test_the_generator_calls_it_with_the_platform_token_and_holds_no_gpu(served: Rendered) -> None:
    d = served.deployment("generator")
    c = _container(d)
    args = c["args"]
    assert "--backend=openai" in args and f"--base-url=http://{VLLM}:8000/v1" in args
    assert "--model=Qwen/Qwen2.5-14B-Instruct" in args  # the name vLLM serves the model under
    assert c["image"].startswith("s3-platform:")  # the CPU image: no vLLM, no CUDA in the generator pod
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    pod = d["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "affinity" not in pod and "tolerations" not in pod
    assert "dshm" not in {v["name"] for v in pod["volumes"]}
    vllm_env = _env(_container(served.get("Deployment", VLLM)))
    assert _env(c)["OPENAI_API_KEY"] == vllm_env["VLLM_API_KEY"]  # the same Secret key on both ends
    svc = served.get("Service", VLLM)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = served.get("Deployment", VLLM)["spec"]["template"]["metadata"]["labels"]
    assert _matches(svc["spec"]["selector"], pod_labels)
    assert not _matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])


def test_only_platform_pods_reach_it_and_prometheus_scrapes_its_metrics(served: Rendered) -> None:
    pol = served.get("NetworkPolicy", VLLM)
    vllm_labels = served.get("Deployment", VLLM)["spec"]["template"]["metadata"]["labels"]
    gen_labels = served.deployment("generator")["spec"]["template"]["metadata"]["labels"]
    assert _matches(pol["spec"]["podSelector"]["matchLabels"], vllm_labels)
    platform, metrics = pol["spec"]["ingress"]
    assert any(_matches(p["podSelector"]["matchLabels"], gen_labels) for p in platform["from"] if "podSelector" in p)
    assert platform["ports"] == metrics["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    sm = served.get("ServiceMonitor", VLLM)
    assert _matches(sm["spec"]["selector"]["matchLabels"], served.get("Service", VLLM)["metadata"]["labels"])
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "http" and ep["path"] == "/metrics"
    (relabel,) = [r for r in ep["relabelings"] if r.get("targetLabel") == "s3_vllm"]
    assert relabel["replacement"] == RELEASE
    # the Generator dashboard's vLLM panels select exactly the targets this label marks
    dash = json.loads((CHART / "dashboards" / "generator.json").read_text())
    vllm_exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "vllm:" in t["expr"]]
    assert len(vllm_exprs) >= 10
    for expr in vllm_exprs:
        for sel in re.findall(r"vllm:\w+\{([^}]*)\}", expr):
            assert 's3_vllm!=""' in sel and 'job=~"$vllm_job"' in sel, expr
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "vllm_job"]
    assert 's3_vllm!=""' in var["query"]["query"]


def test_without_it_nothing_of_vllm_is_rendered(profile_render: Callable[[str], Rendered]) -> None:
    for profile in PROFILES:
        r = profile_render(profile)
        assert not [d for d in r.docs if d["metadata"]["name"] == VLLM], profile
        assert not any("VLLM_API_KEY" in json.dumps(d) or "OPENAI_API_KEY" in json.dumps(d) for d in r.docs), profile


def test_a_served_name_a_base_url_and_no_token(render: Callable[..., Rendered]) -> None:
    r = render(FILES, {"vllmServer": {"servedModelName": "qwen-14b", "requireToken": False, "maxModelLen": 8192},
                       "generator": {"baseUrl": "http://gateway:8080/v1"}})
    c = _container(r.get("Deployment", VLLM))
    assert "--served-model-name=qwen-14b" in c["args"] and "--max-model-len=8192" in c["args"]
    assert "VLLM_API_KEY" not in _env(c)
    gen = _container(r.deployment("generator"))
    assert "--model=qwen-14b" in gen["args"] and "--base-url=http://gateway:8080/v1" in gen["args"]
    assert "OPENAI_API_KEY" not in _env(gen)


@pytest.mark.parametrize("values, needle", [
    ({"generator": {"backend": "vllm"}}, "vllmServer.enabled needs generator.backend openai"),
    ({"vllmServer": {"tensorParallelSize": 4}}, "tensorParallelSize is 4"),
    ({"vllmServer": {"dtype": "int8"}}, "dtype"),
    ({"vllmServer": {"gpuMemoryUtilization": 1.5}}, "gpuMemoryUtilization"),
])
def test_bad_vllm_server_values_fail_the_install(values: dict[str, Any], needle: str,
                                                  render: Callable[..., Rendered]) -> None:
    with pytest.raises(RenderError, match=re.escape(needle)):
        render(FILES, values)


def test_the_generator_needs_a_base_url_only_without_the_vllm_server(render: Callable[..., Rendered]) -> None:
    with pytest.raises(RenderError, match="baseUrl"):
        render([], {"generator": {"backend": "openai"}})
    r = render([], {"generator": {"backend": "openai", "baseUrl": "http://vllm.example:8000/v1"}})
    assert "--base-url=http://vllm.example:8000/v1" in _container(r.deployment("generator"))["args"]
