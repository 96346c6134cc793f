"""The platform's Grafana dashboards, as code.  ``make dashboards`` writes them to deploy/helm/s3/dashboards/,
where the chart turns each into a ConfigMap for the Grafana sidecar (label ``grafana_dashboard: "1"``).

Every expression uses only metrics the services export (``grpc_server_*`` from s3core.telemetry, each
service's ``s3_<service>_*``, ``s3_train_*`` from the learner, and the ``process_*`` metrics of
prometheus_client) and filters on ``namespace=~"$namespace"`` (an empty label matches too, so the queries
also work outside Kubernetes) and on ``job=~"$job"``, the jobs that export an ``s3_`` metric (a shared namespace's
other workloads stay out of every panel).  tests/deploy/test_dashboards_live.py runs every expression against a real
Prometheus that scraped the real services, and requires data back.

    python deploy/grafana/dashboards.py deploy/helm/s3/dashboards        # write
    python deploy/grafana/dashboards.py --check deploy/helm/s3/dashboards  # exit 1 when they differ
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
# the platform's jobs: every target with an s3_ metric ($job, All = those jobs), so a shared namespace's other
# workloads (their gRPC and process metrics) never leak into a panel
JOB = 'job=~"$job"'
# a window for events that happen once per RL step (an Update, a Rollout): a rate over $__rate_interval is NaN
# between two steps
SPARSE = "1h"
RI = "$__rate_interval"
OK = 'grpc_code="OK"'
SCHEMA_VERSION = 39
WIDTH = 24


def _sel(extra: str = "") -> str:
    return "{" + ",".join(x for x in (NS, JOB, extra) if x) + "}"


def m(metric: str, extra: str = "") -> str:
    """``metric{namespace=~"$namespace"[, extra]}``"""
    return metric + _sel(extra)


def label(name: str, value: str, op: str = "=") -> str:
    """A label matcher, ``name="value"`` (``op`` ``=~``, ``!=``, ...)."""
    return f'{name}{op}"{value}"'


def rate(metric: str, extra: str = "", by: str = "") -> str:
    """``sum [by (...)] (rate(metric{namespace, extra}[$__rate_interval]))``"""
    grp = f" by ({by})" if by else ""
    return f"sum{grp} (rate({metric}{_sel(extra)}[{RI}]))"


def increase(metric: str, extra: str = "", by: str = "", window: str = "$__range") -> str:
    grp = f" by ({by})" if by else ""
    return f"sum{grp} (increase({metric}{_sel(extra)}[{window}]))"


def quantile(q: float, hist: str, extra: str = "", by: str = "", window: str = RI) -> str:
    """``histogram_quantile(q, sum by (le[, by]) (rate(hist_bucket{...}[$__rate_interval])))``"""
    grp = ", ".join(x for x in (by, "le") if x)
    return f"histogram_quantile({q}, sum by ({grp}) (rate({hist}_bucket{_sel(extra)}[{window}])))"


def mean_of(hist: str, extra: str = "", by: str = "") -> str:
    """The mean of a histogram over the rate interval: rate(_sum) / rate(_count)."""
    return f"{rate(hist + '_sum', extra, by)} / {rate(hist + '_count', extra, by)}"


def or_zero(expr: str, label_name: str) -> str:
    """``expr``, or a 0 series labelled ``label_name="none"`` while it has no series: a labelled counter is born at
    its first increment, so a panel of events that never happened (no auth failure, no lost worker: the healthy
    state) would be empty instead of showing 0."""
    return f'{expr} or on () label_replace(vector(0), "{label_name}", "none", "", "")'


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto",
                         "range": not instant, "instant": instant, "editorMode": "code"}
    return t


def _targets(exprs: list[tuple[str, str]] | str) -> list[dict[str, Any]]:
    if isinstance(exprs, str):
        exprs = [(exprs, "")]
    return [target(e, lg, chr(ord("A") + i)) for i, (e, lg) in enumerate(exprs)]


def timeseries(title: str, exprs: list[tuple[str, str]] | str, unit: str = "short", desc: str = "", w: int = 12,
               h: int = 8, stack: bool = False, min0: bool = True) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40,
                              "showPoints": "never", "spanNulls": True,
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {"type": "timeseries", "title": title, "description": desc, "datasource": DS,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": _targets(exprs), "_w": w, "_h": h}


def stat(title: str, expr: str, unit: str = "short", desc: str = "", w: int = 4, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None, decimals: int | None = None,
         legend: str = "") -> dict[str, Any]:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
    defaults: dict[str, Any] = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": desc, "datasource": DS,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
                        "orientation": "auto"},
            "targets": [target(expr, legend)], "_w": w, "_h": h}


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": WIDTH, "_h": 1}


def job_var() -> dict[str, Any]:
    """The platform's jobs in the chosen namespaces: those that export an s3_ metric.  All = exactly these (Grafana
    joins the listed values into a regex), never `.*`."""
    q = 'label_values({__name__=~"s3_.+", namespace=~"$namespace"}, job)'
    return {"name": "job", "label": "job", "type": "query", "datasource": DS,
            "query": {"query": q, "refId": "job"}, "definition": q, "refresh": 2, "includeAll": True,
            "multi": True, "sort": 1, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


# the chart's vLLM OpenAI servers (vllmServer.enabled): their ServiceMonitor labels every target s3_vllm=<release>,
# so another vLLM in the namespace stays out; $vllm_job lists those targets' jobs
VLLM = 's3_vllm!=""'
VLLM_JOB = 'job=~"$vllm_job"'


def vllm_job_var() -> dict[str, Any]:
    """The jobs of this platform's vLLM servers (they export vllm:* metrics, no s3_ one)."""
    q = f'label_values(vllm:num_requests_running{{{NS}, {VLLM}}}, job)'
    return {"name": "vllm_job", "label": "vLLM server", "type": "query", "datasource": DS,
            "query": {"query": q, "refId": "vllm_job"}, "definition": q, "refresh": 2, "includeAll": True,
            "multi": True, "sort": 1, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def vsel(*extra: str) -> str:
    """The selector of a vLLM server metric: ``{namespace, job=~"$vllm_job", s3_vllm!=""[, extra]}``."""
    return "{" + ",".join((NS, VLLM_JOB, VLLM, *extra)) + "}"


def vrate(metric: str, by: str = "") -> str:
    grp = f" by ({by})" if by else ""
    return f"sum{grp} (rate({metric}{vsel()}[{RI}]))"


def vquantile(q: float, hist: str, alt: str = "") -> str:
    """A quantile of a vLLM histogram; ``alt``: the name older vLLM releases export it under (either is there)."""
    inner = f"rate({hist}_bucket{vsel()}[{RI}])"
    if alt:
        inner = f"{inner} or rate({alt}_bucket{vsel()}[{RI}])"
    return f"histogram_quantile({q}, sum by (le) ({inner}))"


def namespace_var(metric: str) -> dict[str, Any]:
    return {"name": "namespace", "label": "namespace", "type": "query", "datasource": DS,
            "query": {"query": f"label_values({metric}, namespace)", "refId": "namespace"},
            "definition": f"label_values({metric}, namespace)", "refresh": 2, "includeAll": True,
            "allValue": ".*", "multi": True, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


DATASOURCE_VAR = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                  "current": {}, "hide": 0, "refresh": 1, "regex": ""}


def dashboard(uid: str, title: str, desc: str, ns_metric: str, panels: list[dict[str, Any]],
              links: bool = True, extra_vars: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Lay ``panels`` out left to right in rows of 24 columns; ids in order."""
    x = y = row_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > WIDTH or p["type"] == "row":
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_h = max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
        out.append(p)
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["s3"], "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "timezone": "browser", "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "fiscalYearStartMonth": 0,
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "s3 dashboards", "type": "dashboards", "tags": ["s3"], "asDropdown": True,
                   "includeVars": True, "keepTime": True}] if links else [],
        "templating": {"list": [DATASOURCE_VAR, namespace_var(ns_metric), job_var(), *(extra_vars or [])]},
        "panels": out,
    }


# --- the dashboards ------------------------------------------------------------------------------------

def overview() -> dict[str, Any]:
    h = "grpc_server_handled_total"
    return dashboard("s3-overview", "s3 / Platform overview",
                     "Every s3 service at a glance: RPC traffic, errors and latency from the shared gRPC server "
                     "metrics, the jobs, the policy being served, and each process's memory and CPU.",
                     "grpc_server_handled_total", [
        stat("RPCs / s", rate(h), "reqps", "RPCs completed per second, all services (health checks excluded)."),
        stat("Error ratio", f"1 - ({rate(h, OK)} / {rate(h)})", "percentunit",
             "Share of RPCs that did not end OK (client errors such as INVALID_ARGUMENT included).",
             thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")], decimals=2),
        stat("Jobs running", f"sum({m('s3_controller_jobs', label('state', 'running'))})", "none",
             "Controller jobs in state running."),
        stat("Jobs pending", f"sum({m('s3_controller_jobs', label('state', 'pending'))})", "none",
             "Controller jobs waiting to start (or waiting for their next attempt)."),
        stat("Policy version served", f"max(s3_searcher_policy_version{_sel()})", "none",
             "Version of the search policy the searcher serves (0 = the initial model)."),
        stat("Job store (Redis)", f"min(s3_controller_redis_up{_sel()})", "none",
             "1 while the controller reaches Redis, 0 while it does not (RPCs then answer UNAVAILABLE).",
             thresholds=[(None, "red"), (1, "green")]),
        row("Traffic"),
        timeseries("RPCs / s by service", [(rate(h, by="grpc_service"), "{{grpc_service}}")], "reqps",
                   "Completed RPCs per second per gRPC service."),
        timeseries("Errors / s by service and code",
                   [(rate(h, label('grpc_code', 'OK', '!='), by="grpc_service, grpc_code"), "{{grpc_service}} {{grpc_code}}")],
                   "reqps", "RPCs that ended with a status other than OK."),
        timeseries("p95 latency by service",
                   [(quantile(0.95, "grpc_server_handling_seconds", by="grpc_service"), "{{grpc_service}}")], "s",
                   "95th percentile of the server-side handling time of an RPC (streams: until the last message)."),
        timeseries("RPCs in flight",
                   [(f"sum by (grpc_service) (grpc_server_started_total{_sel()}) - "
                     f"sum by (grpc_service) (grpc_server_handled_total{_sel()})", "{{grpc_service}}")], "none",
                   "Started minus completed RPCs: requests being handled right now."),
        row("Processes"),
        timeseries("Resident memory", [(f"sum by (job, instance) (process_resident_memory_bytes{_sel()})",
                                        "{{job}} {{instance}}")], "bytes",
                   "Resident set size of each service process."),
        timeseries("CPU", [(f"sum by (job, instance) (rate(process_cpu_seconds_total{_sel()}[{RI}]))",
                            "{{job}} {{instance}}")], "percentunit",
                   "CPU seconds per second of each service process (1 = one core)."),
    ])


def retriever() -> dict[str, Any]:
    svc = label('grpc_service', 's3.v1.Retriever')
    return dashboard("s3-retriever", "s3 / Retriever",
                     "The retriever: query throughput, index search latency, batch sizes, the loaded indexes, and "
                     "its RPCs by method and status code.", "s3_retriever_queries_total", [
        stat("Queries / s", rate("s3_retriever_queries_total"), "ops", "Queries searched per second (each query "
             "of a batch counts once)."),
        stat("Search p95", quantile(0.95, "s3_retriever_search_seconds"), "s",
             "95th percentile of the index search time of one batch."),
        stat("Mean batch", mean_of("s3_retriever_batch_size"), "none", "Mean number of queries per search request.",
             decimals=1),
        # replicas of one Service hold the same documents (max); shards (one Service each) add up (sum)
        stat("Documents", f"sum by (backend) (max by (backend, index, service) (s3_retriever_index_documents{_sel()}))",
             "short", "Documents in each loaded index, by backend (bm25, dense, lucene); retriever shards add up.",
             w=6, legend="{{backend}}"),
        stat("Error ratio", f"1 - ({rate('grpc_server_handled_total', svc + ',' + OK)} / "
             f"{rate('grpc_server_handled_total', svc)})", "percentunit",
             "Share of Retriever RPCs that did not end OK.", w=6,
             thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")], decimals=2),
        timeseries("Queries / s by instance", [(rate("s3_retriever_queries_total", by="instance"), "{{instance}}")],
                   "ops", "Queries searched per second per retriever replica."),
        timeseries("Search latency", [(quantile(q, "s3_retriever_search_seconds"), f"p{int(q * 100)}")
                                      for q in (0.5, 0.95, 0.99)], "s",
                   "Index search time of one batch (index work only, no RPC overhead)."),
        timeseries("Batch size", [(quantile(0.5, "s3_retriever_batch_size"), "p50"),
                                  (quantile(0.95, "s3_retriever_batch_size"), "p95"),
                                  (mean_of("s3_retriever_batch_size"), "mean")], "none",
                   "Queries per search request."),
        timeseries("RPCs / s by method and code",
                   [(rate("grpc_server_handled_total", svc, by="grpc_method, grpc_code"),
                     "{{grpc_method}} {{grpc_code}}")], "reqps", "Retriever RPCs by method and final status code."),
        timeseries("RPC p95 by method", [(quantile(0.95, "grpc_server_handling_seconds", svc, by="grpc_method"),
                                          "{{grpc_method}}")], "s",
                   "95th percentile handling time of Retriever RPCs (decoding, search, encoding)."),
        row("Dynamic batching"),
        timeseries("Coalesced batch size", [(mean_of("s3_retriever_batcher_requests_per_batch"), "requests / batch"),
                                            (mean_of("s3_retriever_batcher_queries_per_batch"), "queries / batch")],
                   "none", "Search requests (and distinct queries) coalesced into one backend search "
                   "(retriever.batch_window_ms)."),
        timeseries("Batch queue wait", [(quantile(q, "s3_retriever_batcher_queue_wait_seconds"), f"p{int(q * 100)}")
                                        for q in (0.5, 0.95)], "s",
                   "Time a Search request waited for its coalesced batch to start."),
        timeseries("Rejected searches / s", [(rate("s3_retriever_batcher_rejected_total", by="instance"),
                                              "{{instance}}")], "reqps",
                   "Search requests refused with RESOURCE_EXHAUSTED because the batch queue was full."),
    ])


def generator() -> dict[str, Any]:
    svc = label('grpc_service', 's3.v1.Generator')
    return dashboard("s3-generator", "s3 / Generator",
                     "The frozen generator: requests, token throughput, batch latency and size, and its RPCs.",
                     "s3_generator_requests_total", [
        stat("Requests / s", rate("s3_generator_requests_total"), "reqps", "Generator RPCs received per second."),
        stat("Completion tokens / s", rate("s3_generator_tokens_total", label('kind', 'completion')), "short",
             "Completion tokens generated per second, all replicas."),
        stat("Batch p95", quantile(0.95, "s3_generator_generate_seconds"), "s",
             "95th percentile time of one model batch (prefill + decode)."),
        stat("Mean batch", mean_of("s3_generator_batch_size"), "none", "Mean sequences per model batch.",
             decimals=1),
        stat("Error ratio", f"1 - ({rate('grpc_server_handled_total', svc + ',' + OK)} / "
             f"{rate('grpc_server_handled_total', svc)})", "percentunit",
             "Share of Generator RPCs that did not end OK.", w=8,
             thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")], decimals=2),
        timeseries("Requests / s by RPC", [(rate("s3_generator_requests_total", by="rpc"), "{{rpc}}")], "reqps",
                   "Answer, Judge, Complete and ModelInfo calls per second."),
        timeseries("Tokens / s", [(rate("s3_generator_tokens_total", by="kind"), "{{kind}}")], "short",
                   "Prompt and completion tokens processed per second."),
        timeseries("Last batch throughput", [(f"avg by (instance) (s3_generator_tokens_per_second{_sel()})",
                                              "{{instance}}")], "short",
                   "Completion tokens per second of each replica's last batch."),
        timeseries("Batch latency", [(quantile(q, "s3_generator_generate_seconds"), f"p{int(q * 100)}")
                                     for q in (0.5, 0.95, 0.99)], "s",
                   "Time of one model batch (prefill + decode)."),
        timeseries("Batch size", [(quantile(0.5, "s3_generator_batch_size"), "p50"),
                                  (quantile(0.95, "s3_generator_batch_size"), "p95"),
                                  (mean_of("s3_generator_batch_size"), "mean")], "none",
                   "Sequences generated together in one forward batch."),
        timeseries("Tokens per batch", [(f"{rate('s3_generator_tokens_total', by='kind')} / ignoring (kind) "
                                         f"group_left {rate('s3_generator_batch_size_count')}", "{{kind}}")],
                   "short", "Mean prompt and completion tokens per model batch."),
        timeseries("RPCs / s by method and code",
                   [(rate("grpc_server_handled_total", svc, by="grpc_method, grpc_code"),
                     "{{grpc_method}} {{grpc_code}}")], "reqps", "Generator RPCs by method and final status code."),
        timeseries("RPC p95 by method", [(quantile(0.95, "grpc_server_handling_seconds", svc, by="grpc_method"),
                                          "{{grpc_method}}")], "s",
                   "95th percentile handling time of Generator RPCs (queueing for a batch included)."),
        *vllm_panels(),
    ], extra_vars=[vllm_job_var()])


def vllm_panels() -> list[dict[str, Any]]:
    """vLLM's own /metrics, when the generator runs on the chart's vLLM OpenAI server (vllmServer.enabled); empty
    panels otherwise."""
    kv = f"max by (instance) (vllm:kv_cache_usage_perc{vsel()} or vllm:gpu_cache_usage_perc{vsel()})"
    return [
        row("vLLM server (vllmServer.enabled: the generator's openai backend calls it)"),
        stat("Requests running", f"sum(vllm:num_requests_running{vsel()})", "none",
             "Requests in the vLLM engine's running batch, all vLLM server replicas."),
        stat("Requests waiting", f"sum(vllm:num_requests_waiting{vsel()})", "none",
             "Requests queued in vLLM for a place in the batch (KV cache or max-num-seqs full).",
             thresholds=[(None, "green"), (1, "orange")]),
        stat("KV cache used", f"max({kv})", "percentunit",
             "Largest share of KV-cache blocks in use on a replica (1 = full: new requests wait, running ones can "
             "be preempted).", thresholds=[(None, "green"), (0.9, "orange")], decimals=1),
        stat("Generation tokens / s", vrate("vllm:generation_tokens_total"), "short",
             "Tokens vLLM generated per second, all replicas."),
        stat("TTFT p95", vquantile(0.95, "vllm:time_to_first_token_seconds"), "s",
             "95th percentile time to the first token (queueing and prefill)."),
        stat("Preemptions / s", vrate("vllm:num_preemptions_total"), "ops",
             "Running requests vLLM preempted for lack of KV cache (recomputed later).",
             thresholds=[(None, "green"), (0.01, "orange")]),
        timeseries("vLLM requests", [(f"sum by (instance) (vllm:num_requests_running{vsel()})", "running {{instance}}"),
                                     (f"sum by (instance) (vllm:num_requests_waiting{vsel()})", "waiting {{instance}}")],
                   "none", "Requests running and waiting in each vLLM server replica."),
        timeseries("vLLM tokens / s", [(vrate("vllm:prompt_tokens_total"), "prompt"),
                                       (vrate("vllm:generation_tokens_total"), "generation")], "short",
                   "Prompt (prefill) and generated tokens per second, all replicas."),
        timeseries("vLLM latency", [(vquantile(0.5, "vllm:time_to_first_token_seconds"), "TTFT p50"),
                                    (vquantile(0.95, "vllm:time_to_first_token_seconds"), "TTFT p95"),
                                    (vquantile(0.95, "vllm:e2e_request_latency_seconds"), "end-to-end p95"),
                                    (vquantile(0.95, "vllm:request_queue_time_seconds"), "queue p95")], "s",
                   "Time to first token, whole-request latency and time spent waiting, as vLLM measures them."),
        timeseries("vLLM inter-token latency", [(vquantile(q, "vllm:inter_token_latency_seconds",
                                                           "vllm:time_per_output_token_seconds"), f"p{int(q * 100)}")
                                                for q in (0.5, 0.95)], "s",
                   "Time between two generated tokens of a request (decode speed under the current batch)."),
        timeseries("vLLM KV cache", [(kv, "{{instance}}")], "percentunit",
                   "Share of KV-cache blocks in use on each replica."),
        timeseries("vLLM finished requests / s", [(vrate("vllm:request_success_total", by="finished_reason"),
                                                   "{{finished_reason}}")], "reqps",
                   "Requests vLLM finished per second, by why they ended (stop, length, abort)."),
    ]


def rollouts() -> dict[str, Any]:
    svc = label('grpc_service', 's3.v1.Searcher')
    return dashboard("s3-rollouts", "s3 / Rollouts",
                     "The searcher: episodes and turns, how often the policy searches or fails to act, rollout, "
                     "policy-generation and retrieval latency, and the policy version it serves.",
                     "s3_searcher_episodes_total", [
        stat("Episodes / s", rate("s3_searcher_episodes_total"), "ops", "Episodes (trajectories) finished per second."),
        stat("Turns / episode", f"{rate('s3_searcher_turns_total')} / {rate('s3_searcher_episodes_total')}", "none",
             "Mean searcher turns per episode (valid or not).", decimals=2),
        stat("Searches / episode", f"{rate('s3_searcher_searches_total')} / {rate('s3_searcher_episodes_total')}",
             "none", "Mean queries per episode that produced an information block.", decimals=2),
        stat("Invalid turns", f"{rate('s3_searcher_invalid_turns_total')} / {rate('s3_searcher_turns_total')}",
             "percentunit", "Share of turns with no usable action (the environment appended feedback).",
             thresholds=[(None, "green"), (0.2, "orange"), (0.5, "red")], decimals=1),
        stat("Policy version", f"max(s3_searcher_policy_version{_sel()})", "none",
             "Version of the policy being served."),
        stat("Retrieval retries / s", rate("s3_searcher_retrieval_retries_total"), "ops",
             "Retriever calls retried after UNAVAILABLE or a deadline.", thresholds=[(None, "green"), (0.1, "orange")]),
        timeseries("Episodes and turns / s", [(rate("s3_searcher_episodes_total"), "episodes"),
                                              (rate("s3_searcher_turns_total"), "turns"),
                                              (rate("s3_searcher_searches_total"), "searches"),
                                              (rate("s3_searcher_invalid_turns_total"), "invalid turns")], "ops",
                   "Episodes finished, turns taken, searches issued and invalid turns per second."),
        timeseries("Generated tokens / s", [(rate("s3_searcher_generated_tokens_total", by="instance"),
                                             "{{instance}}")], "short", "Action tokens generated by the policy."),
        timeseries("Rollout duration", [(quantile(q, "s3_searcher_rollout_seconds", window=SPARSE), f"p{int(q * 100)}")
                                        for q in (0.5, 0.95)], "s",
                   f"Time of one Rollout request (all its episodes), over the last {SPARSE} (one per training step)."),
        timeseries("Policy generate and retrieval latency (p95)",
                   [(quantile(0.95, "s3_searcher_generate_seconds"), "policy generate (one turn)"),
                    (quantile(0.95, "s3_searcher_search_seconds"), "retriever call (retries included)")], "s",
                   "Where a turn's time goes: one batched generate call of the policy, one batched retriever call."),
        timeseries("Policy version served", [(f"max by (instance) (s3_searcher_policy_version{_sel()})",
                                              "{{instance}}")], "none",
                   "The policy version each searcher replica serves; it steps up after each learner update."),
        timeseries("Policy loads", [(increase("s3_searcher_policy_loads_total", by="result", window=RI), "{{result}}")],
                   "none", "LoadPolicy attempts per rate interval, by result."),
        timeseries("RPCs / s by method and code",
                   [(rate("grpc_server_handled_total", svc, by="grpc_method, grpc_code"),
                     "{{grpc_method}} {{grpc_code}}")], "reqps", "Searcher RPCs by method and final status code.",
                   w=24),
    ])


def training() -> dict[str, Any]:
    def st(name: str) -> str:
        return m('s3_train_stat', label('name', name))

    return dashboard("s3-training", "s3 / Training",
                     "The RL run, step by step, as the learner reports it on each Update: reward and Gain Beyond "
                     "RAG, KL and entropy, PPO/GRPO statistics, throughput, step time by phase, and whether the "
                     "searcher serves the policy the learner published.  Values are those of the last step.",
                     "s3_train_step", [
        stat("Step", f"max(s3_train_step{_sel()})", "none", "Last completed RL step."),
        stat("Learner policy version", f"max(s3_train_policy_version{_sel()})", "none",
             "Policy version the learner published last."),
        stat("Searcher lag", f"max(s3_train_policy_version{_sel()}) - max(s3_searcher_policy_version{_sel()})",
             "none", "Learner version minus the version the searcher serves: 0 between steps.",
             thresholds=[(None, "green"), (1, "orange"), (2, "red")]),
        stat("Reward (mean)", st("reward_mean"), "none", "Mean reward of the last step's trajectories.",
             decimals=3, legend="reward"),
        stat("GBR (mean)", st("gbr_mean"), "none",
             "Mean Gain Beyond RAG of the last step: GenAcc with the searcher's context minus naive RAG's.",
             decimals=3, legend="gbr"),
        stat("Tokens / s", rate("s3_train_tokens_total"), "short",
             "Tokens (prompt, actions, observations) trained on per second."),
        row("Reward"),
        timeseries("Reward and GBR", [(st("reward_mean"), "reward"), (st("gbr_mean"), "GBR")], "none",
                   "Mean reward and mean Gain Beyond RAG per step (the reward is GBR unless reward.mode says "
                   "otherwise).", min0=False),
        timeseries("KL and entropy", [(st("kl"), "KL to reference"), (st("entropy"), "entropy")], "none",
                   "KL of the policy to the frozen reference, and the policy's entropy, per action token."),
        row("Update"),
        timeseries("Losses", [(m('s3_train_stat', label('name', 'policy_loss|value_loss', '=~')), "{{name}}")], "none",
                   "Policy loss; value loss of the critic (PPO only).", min0=False),
        timeseries("Clipping and drift", [(m('s3_train_stat', label('name', 'clip_fraction|approx_kl', '=~')),
                                           "{{name}}")], "none",
                   "Share of action tokens whose ratio was clipped, and the policy's drift within the step."),
        timeseries("Gradient norm", [(m('s3_train_stat', label('name', 'grad_norm|value_grad_norm', '=~')),
                                      "{{name}}")], "none", "Gradient norm before clipping (policy, critic)."),
        timeseries("Learning rate", [(st("lr"), "lr")], "none", "Actor learning rate of the last step."),
        row("Throughput"),
        timeseries("Throughput", [(rate("s3_train_tokens_total"), "tokens / s"),
                                  (rate("s3_train_trajectories_total"), "trajectories / s")], "short",
                   "Tokens and trajectories trained on per second."),
        timeseries("Step time by phase", [(f"sum by (phase) (s3_train_phase_seconds{_sel()})", "{{phase}}")], "s",
                   "Seconds of the last step in rollout, reward, update and publish.", stack=True),
        timeseries("Learner update time", [(quantile(0.5, "s3_learner_update_seconds", window=SPARSE), "p50"),
                                           (quantile(0.95, "s3_learner_update_seconds", window=SPARSE), "p95")], "s",
                   "Time of one learner Update (the RL step, its checkpoint and the exported policy), over the "
                   f"last {SPARSE}: one Update per step, so shorter windows are empty between steps."),
        timeseries("Policy versions", [(f"max(s3_train_policy_version{_sel()})", "learner"),
                                       (f"max(s3_searcher_policy_version{_sel()})", "searcher")], "none",
                   "The version the learner published and the version the searcher serves."),
    ])


def controller() -> dict[str, Any]:
    svc = label('grpc_service', 's3.v1.Controller')
    return dashboard("s3-controller", "s3 / Controller jobs",
                     "The controller: jobs by kind and state, submissions, state changes, worker launches and "
                     "losses, the job store, reconcile time, auth failures and its RPCs.",
                     "s3_controller_redis_up", [
        stat("Running", f"sum({m('s3_controller_jobs', label('state', 'running'))})", "none", "Jobs running."),
        stat("Pending", f"sum({m('s3_controller_jobs', label('state', 'pending'))})", "none",
             "Jobs waiting to start or for their next attempt."),
        stat("Succeeded", f"sum({m('s3_controller_jobs', label('state', 'succeeded'))})", "none",
             "Jobs in the store that succeeded."),
        stat("Failed", f"sum({m('s3_controller_jobs', label('state', 'failed'))})", "none", "Jobs in the store that failed.",
             thresholds=[(None, "green"), (1, "red")]),
        stat("Job store (Redis)", f"min(s3_controller_redis_up{_sel()})", "none",
             "1 while Redis answers; 0 = RPCs fail with UNAVAILABLE and health is NOT_SERVING.",
             thresholds=[(None, "red"), (1, "green")]),
        stat("Reconcile p95", quantile(0.95, "s3_controller_reconcile_seconds"), "s",
             "95th percentile time of one reconcile round (launch, watch, re-attach)."),
        timeseries("Jobs by state", [(f"sum by (state) (s3_controller_jobs{_sel()})", "{{state}}")], "none",
                   "Jobs in the job store, by state."),
        timeseries("Active jobs by kind", [(m('s3_controller_jobs', label('state', 'pending|running', '=~')),
                                            "{{kind}} {{state}}")], "none",
                   "Pending and running jobs per kind (index, precompute, eval, train, infer)."),
        timeseries("Submissions", [(increase("s3_controller_submits_total", by="kind, result", window=RI),
                                    "{{kind}} {{result}}")], "none",
                   "SubmitJob / RegisterJob requests per rate interval, by kind and result (created, duplicate, "
                   "invalid, ...)."),
        timeseries("State changes", [(increase("s3_controller_transitions_total", by="state", window=RI),
                                      "{{state}}")], "none",
                   "Job state changes per rate interval, by the new state."),
        timeseries("Finished jobs by kind",
                   [(increase("s3_controller_transitions_total", label('state', 'succeeded|failed|cancelled', '=~'),
                              by="kind, state", window=RI), "{{kind}} {{state}}")], "none",
                   "Jobs reaching a final state per rate interval."),
        timeseries("Worker launches", [(increase("s3_controller_launches_total", by="backend, result", window=RI),
                                        "{{backend}} {{result}}")], "none",
                   "Worker launches (local processes or Kubernetes Jobs) per rate interval, by result."),
        timeseries("Workers lost", [(or_zero(increase("s3_controller_workers_lost_total", by="kind", window=RI),
                                             "kind"), "{{kind}}")],
                   "none", "Attempts failed because their worker died, hung or stopped sending heartbeats "
                   "(0, kind none: no worker lost yet)."),
        timeseries("Auth failures", [(or_zero(increase("s3_controller_auth_failures_total", by="method", window=RI),
                                              "method"), "{{method}}")], "none",
                   "RPCs rejected as UNAUTHENTICATED (missing or wrong bearer token), by method (0, method none: "
                   "no failure yet)."),
        timeseries("Reconcile time", [(quantile(0.5, "s3_controller_reconcile_seconds"), "p50"),
                                      (quantile(0.99, "s3_controller_reconcile_seconds"), "p99")], "s",
                   "Time of one reconcile round."),
        timeseries("RPCs / s by method and code",
                   [(rate("grpc_server_handled_total", svc, by="grpc_method, grpc_code"),
                     "{{grpc_method}} {{grpc_code}}")], "reqps", "Controller RPCs by method and final status code."),
    ])


DASHBOARDS = {"overview": overview, "retriever": retriever, "generator": generator, "rollouts": rollouts,
              "training": training, "controller": controller}


def render_all() -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(fn(), indent=2, sort_keys=False) + "\n" for name, fn in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write (or --check) the s3 Grafana dashboards")
    p.add_argument("out", type=Path, help="folder of the JSON files (deploy/helm/s3/dashboards)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    args = p.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run `make dashboards`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
