"""The Grafana dashboards without Grafana (none runs here): the JSON files are what deploy/grafana/dashboards.py
generates, they have the structure Grafana's dashboard model expects (unique uids and panel ids, a Prometheus
datasource variable, panels inside the 24-column grid without overlaps), every variable an expression uses is
defined, and every metric an expression names is one the code defines.  test_dashboards_live.py runs the
queries themselves against a real Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploykit import CHART, REPO

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
GRAFANA_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
# prometheus_client's default process collector (on every service's /metrics)
PROCESS_METRICS = {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
                   "process_start_time_seconds", "process_open_fds", "process_max_fds"}


# vLLM's own /metrics (the chart's vllmServer; vLLM >= 0.10 names, and the older names the panels fall back to),
# as vLLM's docs list them (docs/design/metrics.md) -- no vLLM runs here to scrape
VLLM_METRICS = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                "vllm:num_preemptions_total", "vllm:request_success_total"} | {
    f"{h}_bucket" for h in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                            "vllm:request_queue_time_seconds", "vllm:inter_token_latency_seconds",
                            "vllm:time_per_output_token_seconds")}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _code_metrics() -> set[str]:
    """Every metric name defined with prometheus_client in libs/ and services/ (histograms: _bucket/_sum/_count)."""
    names: set[str] = set()
    pattern = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-z_:][a-z0-9_:]*)\"", re.S)
    for root in (REPO / "libs", REPO / "services"):
        for f in root.rglob("*.py"):
            for kind, name in pattern.findall(f.read_text()):
                if kind == "Histogram":
                    names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
                elif kind == "Summary":
                    names |= {f"{name}_sum", f"{name}_count"}
                else:
                    names.add(name)
    return names


def test_the_json_is_what_the_generator_writes() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "grafana" / "dashboards.py"), "--check",
                           str(CHART / "dashboards")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [p.stem for p in DASHBOARDS] == sorted(["overview", "retriever", "generator", "rollouts", "training",
                                                   "controller"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    d = _load(path)
    assert re.fullmatch(r"s3-[a-z-]+", d["uid"]) and len(d["uid"]) <= 40
    assert d["title"].startswith("s3 / ") and d["schemaVersion"] >= 36 and "s3" in d["tags"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{path.stem}: panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat") and p["title"] and p["description"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip()
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var in GRAFANA_VARS, f"{p['title']}: ${var} is not defined"
            assert 'namespace=~"$namespace"' in t["expr"], f"{p['title']}: not filtered by namespace"


def test_every_metric_a_panel_names_is_defined_in_the_code() -> None:
    defined = _code_metrics() | PROCESS_METRICS | VLLM_METRICS
    assert {"grpc_server_handled_total", "s3_train_stat", "s3_learner_update_seconds_bucket"} <= defined
    used = set()
    for path in DASHBOARDS:
        d = _load(path)
        for p in d["panels"]:
            for t in p.get("targets", []):
                for metric in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", t["expr"]):
                    assert metric in defined, f"{path.stem} / {p['title']}: no code exports {metric}"
                    used.add(metric)
        for v in d["templating"]["list"]:
            if v["type"] == "query" and v["name"] == "namespace":
                metric = re.fullmatch(r"label_values\((\w+), *namespace\)", v["query"]["query"]).group(1)
                assert metric in defined
            elif v["type"] == "query" and v["name"] == "vllm_job":  # the chart's vLLM servers, by their s3_vllm label
                assert v["query"]["query"] == 'label_values(vllm:num_requests_running{namespace=~"$namespace", ' \
                    's3_vllm!=""}, job)'
            elif v["type"] == "query":  # the platform's jobs: those exporting an s3_ metric
                assert v["name"] == "job" and v["query"]["query"].startswith('label_values({__name__=~"s3_.+"')
    # each service's own metrics are on a dashboard
    for prefix in ("s3_retriever_", "s3_generator_", "s3_searcher_", "s3_train_", "s3_learner_", "s3_controller_",
                   "grpc_server_", "vllm:"):
        assert any(m.startswith(prefix) for m in used), prefix
