"""Every PromQL expression of every Grafana dashboard, evaluated by a REAL Prometheus (Debian's ``prometheus``)
that scraped the REAL services -- retriever, generator, searcher, learner and controller, started on loopback
as ``python -m s3_<service>`` with a real redis-server -- while they did real work: a two-step PPO run through
the learner service (rollouts, answers, an Update per step, policy loads), retriever searches (one of them
invalid, so error panels have an error to show), and an index job through the controller (plus one
unauthenticated call).  A tiny Qwen2 model keeps the generator, searcher and learner fast on CPU.

The targets carry the labels a Prometheus Operator ServiceMonitor gives them (job = the Service name, namespace,
service, pod, container, endpoint), and a stranger -- another workload in the same namespace exporting the same
gRPC and process metric names with huge values -- is scraped beside them.

Each expression, with Grafana's variables replaced ($namespace by the namespace, $job by the regex Grafana's
"All" makes of the job variable's values, $__rate_interval by a window covering the run), must come back with at
least one series and not only NaN, with no trace of the stranger, and with every label its legend names set; the
panels over once-per-step events must still have data when no step fell in the last rate interval; each template
variable's label_values() query must list the namespace, and the platform's jobs but not the stranger's; every
metric name a dashboard mentions must be one Prometheus scraped.  The chart's PrometheusRule expressions are
evaluated too: valid, silent on a healthy run, over series that exist.  Grafana itself does not run here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploykit import CHART, missing_tool

NAMESPACE = "s3-test"
TOKEN = "dashboards-token-5b1e"
SCRAPE_S = 1
SUBSTITUTE = {"$namespace": NAMESPACE, "$__rate_interval": "5m", "$__range": "5m", "$__interval": "15s"}
SERVICES = ("retriever", "generator", "searcher", "learner", "controller")
# Grafana's "All" of the job variable: the listed values joined into a regex
SUBSTITUTE["$job"] = "(" + "|".join(f"s3-{s}" for s in SERVICES) + ")"
# the Generator dashboard's vLLM server row: no vLLM OpenAI server runs here (its panels are checked to be valid
# PromQL over the same Prometheus, not for data; tests/deploy/test_chart_vllm_server.py checks its scrape config)
SUBSTITUTE["$vllm_job"] = "s3-vllm"
VLLM_METRIC = "vllm:"
STRANGER_JOB = "other-app"
HUGE = 1e11  # the stranger's values are above it; the platform's are far below
KNOBS = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 12, "max_obs_tokens": 200}


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    ready: Path
    log: Path
    grpc_port: int = 0
    http_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def _start(name: str, module: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    ready, log = workdir / "ready.json", workdir / "service.log"
    cmd = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
           "--ready-file", str(ready)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "S3_LOG_LEVEL": "INFO", **(env or {})})
    return Proc(name, proc, ready, log)


def _wait_ready(procs: list[Proc], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        while not p.grpc_port:
            if p.proc.poll() is not None:
                pytest.fail(f"{p.name} exited with {p.proc.returncode}:\n{p.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"{p.name} not ready after {timeout:.0f}s:\n{p.log.read_text(errors='replace')}")
            if p.ready.is_file():
                with contextlib.suppress(json.JSONDecodeError):
                    info = json.loads(p.ready.read_text())
                    p.grpc_port, p.http_port = int(info["grpc_port"]), int(info["http_port"])
                    continue
            time.sleep(0.05)


def _stop(procs: list[Proc]) -> None:
    for p in procs:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, binary: str, workdir: Path, targets: dict[str, int], stranger: int) -> None:
        # the labels the Prometheus Operator puts on a ServiceMonitor's targets: job = the Service's name
        def sm(job: str, port: int, container: str) -> dict[str, Any]:
            return {"job_name": job, "metrics_path": "/metrics", "static_configs": [{
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"namespace": NAMESPACE, "service": job, "pod": f"{job}-7d9f8b6c5-x2x4z",
                           "container": container, "endpoint": "http"}}]}

        cfg = {"global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                          "evaluation_interval": f"{SCRAPE_S}s"},
               "scrape_configs": [sm(f"s3-{name}", port, name) for name, port in targets.items()]
               + [sm(STRANGER_JOB, stranger, "app")]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr, time=f"{time.time():.3f}")

    def value(self, expr: str) -> float | None:
        res = self.query(expr).get("data", {}).get("result", [])
        return float(res[0]["value"][1]) if res else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _wait_for(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stranger() -> Any:
    """Another workload of the namespace: the platform's gRPC and process metric names, huge and growing values."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    t0 = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            n = 3e12 * (1 + time.monotonic() - t0)  # counters grow by 3e12 / s
            lines = []
            for svc in ("s3.v1.Retriever", "s3.v1.Generator", "other.v1.Thing"):
                lab = f'grpc_service="{svc}",grpc_method="Search"'
                lines += [f'grpc_server_started_total{{{lab}}} {n}',
                          f'grpc_server_handled_total{{{lab},grpc_code="OK"}} {n}',
                          f'grpc_server_handled_total{{{lab},grpc_code="INTERNAL"}} {n}',
                          f'grpc_server_handling_seconds_bucket{{{lab},le="0.1"}} {n}',
                          f'grpc_server_handling_seconds_bucket{{{lab},le="+Inf"}} {n}',
                          f'grpc_server_handling_seconds_sum{{{lab}}} {n * 1e3}',
                          f'grpc_server_handling_seconds_count{{{lab}}} {n}']
            lines += [f"process_resident_memory_bytes {5 * HUGE * 100}", f"process_cpu_seconds_total {n}"]
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- the embedded run, scraped -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if not binary:
        missing_tool("no prometheus binary (Debian: apt-get install -y --no-install-recommends prometheus)")
    from s3core.config import load_config
    from s3core.data.synth import synthesize
    from s3core.jobs.client import ControllerClient, Unauthenticated
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model
    from s3core.rpc.clients import GeneratorClient, LearnerClient, RetrieverClient, SearcherClient
    from s3core.runtime.local import LocalStack
    from s3core.train.run import TrainJob, run_training

    root = tmp_path_factory.mktemp("dashboards")
    synthesize(root / "world", seed=5, n_entities=40, n_questions=6)
    build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    model = str(build_tiny_model(root / "tiny", seed=1))
    ckdir = root / "ckpt"

    stack = LocalStack(root / "redis", detach=False)
    redis_url = f"redis://127.0.0.1:{stack.start_redis().grpc_port}/0"
    procs: list[Proc] = []
    prom: Prometheus | None = None
    stranger = None
    try:
        ret = _start("retriever", "s3_retriever", ["--index", str(root / "idx")], root / "retriever")
        gen = _start("generator", "s3_generator", ["--backend", "hf", "--model", model], root / "generator")
        learner = _start("learner", "s3_learner", ["--checkpoint-dir", str(ckdir), "--model", model, "--algorithm",
                                                   "ppo", "--device", "cpu", "--threads", "1"], root / "learner")
        ctl = _start("controller", "s3_controller",
                     ["--redis-url", redis_url, "--state-dir", str(root / "ctl-state"), "--heartbeat-interval", "0.5",
                      "--heartbeat-timeout", "10", "--reconcile-interval", "0.25", "--worker-threads", "1"],
                     root / "controller", env={"S3_AUTH_TOKEN": TOKEN})
        procs += [ret, gen, learner, ctl]
        _wait_ready([ret])
        srch = _start("searcher", "s3_searcher", ["--retriever", ret.address, "--model", model, "--threads", "1"],
                      root / "searcher")
        procs.append(srch)
        _wait_ready(procs)
        stranger = _stranger()
        prom = Prometheus(binary, root, {p.name: p.http_port for p in procs}, stranger.server_address[1])
        # the counters' starting values are scraped before any traffic, so rate() sees every change
        _wait_for(lambda: prom.value(f'count(up{{namespace="{NAMESPACE}"}} == 1)') == len(procs) + 1, 30,
                  "a first scrape of every service and the stranger")
        time.sleep(SCRAPE_S)

        # an index job through the controller, beside the training run
        spec = yaml.safe_dump({"kind": "index", "presets": ["embedded"],
                               "job": {"corpus": "world/corpus.jsonl", "out": "idx-from-job"}})
        with ControllerClient(ctl.address, token=TOKEN) as c:
            job = c.submit(spec, workdir=str(root))
        with ControllerClient(ctl.address, token="not-the-token") as bad, pytest.raises(Unauthenticated):
            bad.list()

        cfg = load_config(overrides={
            "search": KNOBS, "generator": {"judge": "none", "max_new_tokens": 8}, "searcher": {"model": model},
            "reward": {"on_missing_baseline": "compute"},
            "rl": {"algorithm": "ppo", "actor_lr": 1e-3, "critic_lr": 1e-3, "micro_batch_size": 2},
            "train": {"questions": [str(root / "world" / "synth_1hop.jsonl")], "filter": False, "batch_size": 2,
                      "steps": 2, "checkpoint_dir": str(ckdir), "retriever": ret.address, "generator": gen.address,
                      "searcher": srch.address, "learner": learner.address}})
        errors: list[BaseException] = []

        def train() -> None:
            try:
                run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=False))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        th = threading.Thread(target=train)
        th.start()
        client = RetrieverClient(ret.address)
        client.search(["who founded the city"], k=2)
        with pytest.raises(Exception, match="k"):
            client.search(["k=0 is invalid"], k=0)  # INVALID_ARGUMENT: the error panels get an error
        client.close()
        with ControllerClient(ctl.address, token=TOKEN) as c:
            done = _wait_for(lambda: (j := c.get(job.id)).state in ("succeeded", "failed", "cancelled") and j, 120,
                             "the index job")
        assert done.state == "succeeded", done.reason
        th.join(timeout=300)
        assert not th.is_alive() and not errors, errors

        _wait_for(lambda: prom.value('max(s3_train_step{job="s3-learner"})') == 2, 30, "the learner's step 2")
        _wait_for(lambda: prom.value('s3_controller_jobs{kind="index",state="succeeded"}') == 1, 30,
                  "the finished index job")
        _wait_for(lambda: prom.value("max(s3_searcher_policy_version)") == 2, 30, "the searcher at version 2")
        # A labelled series is born at its first increment, and rate() only counts what changes after its
        # first scrape: a short run can be over before then.  A second, lighter wave of calls to every
        # service, after those scrapes, gives each series a change to show (a live cluster always has one).
        time.sleep(2 * SCRAPE_S)
        with RetrieverClient(ret.address) as r, GeneratorClient(gen.address) as g, \
                SearcherClient(srch.address) as s, LearnerClient(learner.address) as lc, \
                ControllerClient(ctl.address, token=TOKEN) as c:
            r.search(["where is the river"], k=2)
            g.answer([("where is the river?", r.search(["where is the river"], k=1)[0])], max_new_tokens=4)
            g.model_info()
            s.policy_info()
            lc.status()
            c.list()
        time.sleep(3 * SCRAPE_S)
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        if stranger is not None:
            stranger.shutdown()
            stranger.server_close()
        _stop(procs)
        stack.down()


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((CHART / "dashboards").glob("*.json"))}


def _substitute(expr: str) -> str:
    for var, value in sorted(SUBSTITUTE.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown template variable in {expr}"
    return expr


def _targets() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, dash in _dashboards().items():
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                yield name, panel["title"], t


def test_every_panel_query_returns_data(scraped: Prometheus) -> None:
    empty, leaks, unlabelled, checked, vllm_checked = [], [], [], 0, 0
    for name, title, t in _targets():
        expr = _substitute(t["expr"])
        body = scraped.query(expr)
        checked += 1
        if body.get("status") != "success":
            empty.append(f"{name} / {title}: {body.get('error')}: {expr}")
            continue
        result = body["data"]["result"]
        values = [float(r["value"][1]) for r in result]
        if VLLM_METRIC in expr:
            vllm_checked += 1
            continue
        if not values or all(math.isnan(v) for v in values):
            empty.append(f"{name} / {title}: {'NaN only' if values else 'no data'}: {expr}")
        # the stranger in the namespace shows up neither as a series nor inside a sum
        if any(r["metric"].get("job") == STRANGER_JOB for r in result) or any(abs(v) >= HUGE for v in values):
            leaks.append(f"{name} / {title}: {expr} -> {values}")
        # a legend names labels every series has
        for lab in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            if any(not r["metric"].get(lab) for r in result):
                unlabelled.append(f"{name} / {title}: legend label {lab!r} missing in {result[0]['metric']}")
    assert checked > 80 and vllm_checked >= 10
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    assert not leaks, "another workload of the namespace leaks into:\n" + "\n".join(leaks)
    assert not unlabelled, "\n".join(unlabelled)


def test_panels_of_events_that_never_happened_show_zero(scraped: Prometheus) -> None:
    """Auth failures and lost workers: labelled counters that exist only after a first event.  With the metric
    absent (as in a cluster where no call was ever rejected) the panel shows a 0 series, legend label set."""
    seen = 0
    for _, title, t in _targets():
        if title not in ("Auth failures", "Workers lost"):
            continue
        seen += 1
        expr = _substitute(re.sub(r"s3_controller_(auth_failures|workers_lost)_total", "s3_never_exported_total",
                                  t["expr"]))
        result = scraped.query(expr)["data"]["result"]
        assert [float(r["value"][1]) for r in result] == [0.0], (title, result)
        (lab,) = re.findall(r"\{\{\s*(\w+)\s*\}\}", t["legendFormat"])
        assert result[0]["metric"][lab] == "none", result
    assert seen == 2


def test_unscoped_queries_would_show_the_stranger(scraped: Prometheus) -> None:
    """The stranger check can fail: the same query without the job matcher sees the stranger."""
    scoped = _substitute('sum(process_resident_memory_bytes{namespace=~"$namespace",job=~"$job"})')
    unscoped = _substitute('sum(process_resident_memory_bytes{namespace=~"$namespace"})')
    assert scraped.value(scoped) < HUGE <= scraped.value(unscoped)


SPARSE_METRICS = ("s3_learner_update_seconds", "s3_searcher_rollout_seconds")


def test_per_step_panels_keep_data_between_steps(scraped: Prometheus) -> None:
    """Panels over once-per-step events (an Update, a Rollout) still show the last steps when the rate interval
    holds no step (here: the last 3 s, well after the run's last step)."""
    seen = 0
    for name, title, t in _targets():
        if not any(m in t["expr"] for m in SPARSE_METRICS):
            continue
        seen += 1
        expr = _substitute(t["expr"].replace("$__rate_interval", "3s"))
        values = [float(r["value"][1]) for r in scraped.query(expr)["data"]["result"]]
        assert values and not all(math.isnan(v) for v in values), f"{name} / {title} empty between steps: {expr}"
    assert seen >= 4


def test_template_variables_list_the_platform(scraped: Prometheus) -> None:
    for name, dash in _dashboards().items():
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])
            assert m, f"{name}: variable {var['name']} is not a label_values() query"
            selector = _substitute(m.group(1)) if var["name"] != "namespace" else m.group(1)
            series = scraped.api("series", **{"match[]": selector})["data"]
            values = {s.get(m.group(2)) for s in series}
            if var["name"] == "namespace":
                assert NAMESPACE in values, f"{name}: {var['query']['query']}"
            elif var["name"] == "vllm_job":  # no vLLM server here: the query is valid and lists nothing
                assert "allValue" not in var and 's3_vllm!=""' in var["query"]["query"], name
                assert values == set(), f"{name}: {values}"
            else:
                assert var["name"] == "job" and "allValue" not in var, name  # All = the listed jobs, not .*
                assert values == {f"s3-{s}" for s in SERVICES}, f"{name}: {values}"


def test_dashboards_mention_only_scraped_metrics(scraped: Prometheus) -> None:
    scraped_names = set(scraped.api("label/__name__/values")["data"])
    for name, title, t in _targets():
        for metric in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", t["expr"]):
            if metric.startswith(VLLM_METRIC):
                continue  # vLLM's own metrics (no vLLM server here): test_dashboards.py checks their names
            assert metric in scraped_names, f"{name} / {title}: {metric} was never scraped"


def test_alert_rules_hold_on_the_live_metrics(scraped: Prometheus, render: Any) -> None:
    """The chart's PrometheusRule (the GPU profile: ServiceMonitors on, release s3, so the jobs are s3-<service>)
    evaluated against the run: every expression is valid, none fires on this healthy run, and the series each
    alert watches exist (its expression without the threshold returns data)."""
    from deploykit import NAMESPACE as CHART_NAMESPACE
    from deploykit import PROFILES

    (rule,) = render(values_files=PROFILES["gpu"]).of_kind("PrometheusRule")
    rules = {r["alert"]: r["expr"].replace(f'namespace="{CHART_NAMESPACE}"', f'namespace="{NAMESPACE}"')
             for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"S3ServiceDown", "S3HighErrorRatio", "S3RetrieverRejecting", "S3RedisDown",
                          "S3WorkersLost", "S3TrainingStalled", "S3SearcherPolicyBehind"}
    for alert, expr in rules.items():
        body = scraped.query(expr)
        assert body.get("status") == "success", f"{alert}: {body.get('error')}"
        assert body["data"]["result"] == [], f"{alert} fires on a healthy run: {body['data']['result']}"
    watched = {"S3ServiceDown": 5, "S3HighErrorRatio": 5, "S3RedisDown": 1, "S3SearcherPolicyBehind": 1}
    for alert, n in watched.items():
        base = re.sub(r"\s*(==|>)\s*[0-9.]+$", "", rules[alert])
        if alert == "S3HighErrorRatio":  # no server errors here: the errors are empty, the traffic is not
            base = base.split(" / ", 1)[1]
        result = scraped.query(base)["data"]["result"]
        assert len(result) >= n and all(r["metric"].get("job") != STRANGER_JOB for r in result), (alert, result)
    # the stranger's INTERNAL errors would fire S3HighErrorRatio if the rule were not scoped to the platform
    unscoped = re.sub(r',job=~"[^"]*"', "", rules["S3HighErrorRatio"])
    assert scraped.query(unscoped)["data"]["result"], "the unscoped rule should have fired on the stranger"
