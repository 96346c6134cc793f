"""Fault injection with figures: what was tried, what was lost.

1. **retriever killed during a batch of rollouts**: ``--rollouts`` Rollout RPCs (one question
   each, one search turn, the tiny Qwen2 policy) run concurrently against the searcher; while they
   run the retriever is SIGKILLed and restarted on the same port ``--down`` seconds later, ``--kills``
   times.  Counted: episodes asked for, episodes returned, RPCs failed (lost = asked - returned).
2. **generator killed during precompute**: ``s3 precompute`` (the real CLI, batches of ``--batch``)
   over ``--questions`` questions against the retriever and generator services (tiny Qwen2
   generator, 32 new tokens) and a real redis-server.  First one uninterrupted run (namespace
   ``clean``, the reference); then in namespace ``chaos`` the generator is SIGKILLed ``--gen-kills``
   times (once 1/(k+1), 2/(k+1), ... of the baselines are stored), restarted on the same port, and
   the CLI rerun after each kill.  Counted: CLI runs, baselines missing / extra against the question
   set, entries stored before a kill that changed later (recomputed), entries whose content differs
   from the uninterrupted run, Answer RPCs on the last generator, and the time the kills cost.
3. **Redis killed under the controller** (AOF, ``appendfsync everysec`` as ``s3 up`` and the Helm
   chart run it): a real controller (local backend, ``--max-running 1``) with ``--jobs`` submitted
   jobs, and a writer storing baseline batches of 8 (one MULTI/EXEC each, as precompute does) and a
   submitter submitting jobs, both running when Redis is SIGKILLed; Redis is restarted on the same
   port and data dir ``--down`` seconds later.  Then the same with a clean ``SHUTDOWN``.  Counted:
   acknowledged baseline batches and submits missing after the restart (lost), batches stored in
   part, entries changed, the controller's answers while Redis was down (UNAVAILABLE expected), the
   AOF load time, and how long the controller took to serve again.
4. **fsync policy**: baseline batches of 8 written to a redis-server with ``appendfsync everysec``
   and one with ``always``: entries/s of each (the price of closing the 1 s window).

The last line is ``ratio=X.XXXX`` = episodes returned / asked for (1.0 = nothing lost).  Exits 1
when anything was lost.  Related tests: tests/reliability/test_faults.py (generator killed during
precompute, Redis SIGKILL and SHUTDOWN under the controller), tests/integration/
test_searcher_service.py (retriever restart between rollouts), test_precompute.py (precompute
resumed after SIGKILL), test_controller.py (Redis and controller restarts keep every job),
test_train_loop.py (learner killed mid-run).

    .venv/bin/python bench/faults.py --rollouts 24 --kills 3 --questions 160 --gen-kills 3 --jobs 24
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import build_world, service  # noqa: E402  (bench/load.py)

from s3core.runtime.redis_server import RedisProcess  # noqa: E402

SCENARIOS = ("retriever", "generator", "redis", "fsync")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--rollouts", type=int, default=32, help="concurrent Rollout RPCs in the batch (default 32)")
    p.add_argument("--kills", type=int, default=2, help="retriever kills during the batch (default 2)")
    p.add_argument("--down", type=float, default=1.5, help="seconds a killed retriever / Redis stays down (default 1.5)")
    p.add_argument("--questions", type=int, default=160, help="precompute questions (default 160)")
    p.add_argument("--batch", type=int, default=8, help="precompute batch size (default 8)")
    p.add_argument("--gen-kills", type=int, default=3, help="generator kills during precompute (default 3)")
    p.add_argument("--jobs", type=int, default=24, help="jobs submitted to the controller before the Redis kill "
                                                       "(default 24)")
    p.add_argument("--entries", type=int, default=2000, help="baseline entries written before each Redis stop and "
                                                              "per fsync policy (default 2000)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    args.scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def start_proc(module: str, args: list[str], port: int, work: Path, timeout: float = 180.0
               ) -> tuple[subprocess.Popen[bytes], int, int]:
    """``python -m module`` on ``port`` (0 = pick); waits for its ready file; (proc, grpc port, http port)."""
    work.mkdir(parents=True, exist_ok=True)
    ready = work / "ready.json"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port), "--http-port", "0",
           "--ready-file", str(ready)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "S3_LOG_LEVEL": "WARNING"}
    with (work / "service.log").open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    info = None
    while info is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{module} did not start:\n{(work / 'service.log').read_text(errors='replace')[-3000:]}")
        if ready.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                info = json.loads(ready.read_text())
        time.sleep(0.05)
    return proc, int(info["grpc_port"]), int(info["http_port"])


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_retriever(index: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
    return start_proc("s3_retriever", ["--index", str(index), "--threads", "1"], port, work, 60)[0]


def retriever_fault(root: Path, w: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from s3core.rpc.clients import SearcherClient

    knobs = {"initial_k": 2, "retrieve_k": 2, "select_max": 2, "max_turns": 2, "max_new_tokens": 24}
    questions = w["questions"]
    with service("s3_retriever", ["--index", str(w["index"]), "--threads", "1"], root / "ret0") as ret:
        port = ret.port
        with service("s3_searcher", ["--retriever", ret.target, "--model", str(w["model"]), "--threads", "1",
                                     "--max-batch-size", "16"], root / "searcher") as srch:
            client = SearcherClient(srch.target, timeout=600)
            client.rollout(questions[:1], knobs)  # warm
            procs: list[subprocess.Popen[bytes]] = [ret.proc]
            done = threading.Event()
            kills = 0

            def chaos() -> None:
                nonlocal kills
                for i in range(args.kills):
                    time.sleep(0.5)
                    if done.is_set():
                        return
                    procs[-1].send_signal(signal.SIGKILL)
                    procs[-1].wait()
                    kills += 1
                    time.sleep(args.down)
                    procs.append(start_retriever(w["index"], port, root / f"ret{i + 1}"))

            def one(i: int) -> tuple[int, str]:
                q = questions[i % len(questions)]
                try:
                    return len(SearcherClient(srch.target, timeout=600).rollout([q], knobs, seed=i)), ""
                except Exception as exc:  # noqa: BLE001 - counted, not raised
                    return 0, f"{type(exc).__name__}: {exc}"

            t0 = time.monotonic()
            th = threading.Thread(target=chaos)
            th.start()
            with ThreadPoolExecutor(args.rollouts) as pool:
                results = list(pool.map(one, range(args.rollouts)))
            done.set()
            th.join()
            seconds = time.monotonic() - t0
            retries = client_retries(srch)
            for p in procs[1:]:
                p.terminate()
                p.wait(timeout=15)
    returned = sum(n for n, _ in results)
    errors = [e for _, e in results if e]
    return {"asked": args.rollouts, "returned": returned, "lost": args.rollouts - returned, "failed_rpcs": len(errors),
            "errors": errors[:3], "kills": kills, "seconds": seconds, "retrieval_retries": retries}


def client_retries(srch: Any) -> float:
    info = Path(srch.log).parent / "ready.json"
    http_port = json.loads(info.read_text())["http_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("s3_searcher_retrieval_retries_total"):
                return float(line.split()[-1])
    return float("nan")


# --- Redis ---------------------------------------------------------------------------------------------

def baseline_entries(tag: str, n: int, start: int = 0) -> list[tuple[Any, Any]]:
    """Entries ``start .. start+n-1`` of a synthetic baseline set named ``tag``."""
    from s3core.cache.baseline import BaselineRecord
    from s3core.cache.keys import BaselineKey

    return [(BaselineKey(dataset="bench", question=f"{tag} question {i}", index_fingerprint="f" * 16, k=3,
                         generator_model="tiny", prompt_version="v1", judge_id="none"),
             BaselineRecord(question_id=f"{tag}-{i}", answer=f"answer {i}", genacc=i % 2 == 0, em=False, f1=0.5,
                            span=i % 2 == 0, judge=None, doc_ids=(str(i),)))
            for i in range(start, start + n)]


def namespace_values(r: Any, namespace: str) -> dict[bytes, bytes]:
    keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
    out: dict[bytes, bytes] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        out.update(zip(chunk, r.mget(chunk)))
    return out


# --- 2. generator killed during precompute ---------------------------------------------------------------

def handled(http_port: int, service_name: str, method: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "grpc_server_handled_total" and s.labels.get("grpc_service") == service_name
               and s.labels.get("grpc_method") == method)


def generator_fault(root: Path, w: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from s3core.cache.baseline import BaselineCache
    from s3core.data import load_questions
    from s3core.eval.precompute import resolve_setup
    from s3core.rpc.clients import GeneratorClient, RetrieverClient

    cfg = root / "precompute.yaml"
    cfg.write_text(yaml.safe_dump({"eval": {"batch_size": args.batch}, "generator": {"max_new_tokens": 32}}))
    questions = load_questions(w["qfile"], limit=args.questions)
    red = RedisProcess(root / "redis-precompute")
    red.start()
    gen_args = ["--model", str(w["model"]), "--config", str(cfg)]
    gen = None
    try:
        with service("s3_retriever", ["--index", str(w["index"]), "--threads", "1"], root / "gp-retriever") as ret:
            gen, gport, ghttp = start_proc("s3_generator", gen_args, 0, root / "gp-generator")
            gtarget = f"127.0.0.1:{gport}"
            with RetrieverClient(ret.target) as rc, GeneratorClient(gtarget) as gc:
                setup = resolve_setup(rc, gc, k=3, judge=True)
            key_fn = setup.key_fn()

            def cli(namespace: str) -> subprocess.Popen[str]:
                return subprocess.Popen(
                    [sys.executable, "-m", "s3cli", "precompute", "--questions", str(w["qfile"]), "--limit",
                     str(args.questions), "--redis-url", red.url, "--namespace", namespace, "--config", str(cfg),
                     "--quiet", "--retriever", ret.target, "--generator", gtarget],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            # the reference: one uninterrupted run
            t0 = time.monotonic()
            clean = cli("clean")
            _, err = clean.communicate(timeout=3600)
            if clean.returncode != 0:
                raise SystemExit(f"the uninterrupted precompute failed:\n{err}")
            clean_s = time.monotonic() - t0
            expected = {BaselineCache(red.client(), namespace="chaos").redis_key(key_fn(q)).encode()
                        for q in questions}

            # chaos: kill the generator at 1/(k+1), 2/(k+1), ... of the baselines stored, rerun after each
            r = red.client()
            cache = BaselineCache(r, namespace="chaos")
            before: dict[bytes, bytes] = {}
            runs, kills, restart_s, stored_at_kill, errors = 0, 0, [], [], []
            t0 = time.monotonic()
            while True:
                runs += 1
                proc = cli("chaos")
                if kills < args.gen_kills:
                    target = math.ceil(len(expected) * (kills + 1) / (args.gen_kills + 1))
                    while cache.count() < target and proc.poll() is None:
                        time.sleep(0.005)
                    if proc.poll() is None:
                        stored_at_kill.append(cache.count())
                        gen.send_signal(signal.SIGKILL)
                        gen.wait()
                        kills += 1
                    _, err = proc.communicate(timeout=3600)
                    if proc.returncode != 0:
                        errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
                    for k, v in namespace_values(r, "chaos").items():
                        before.setdefault(k, v)
                    if gen.poll() is not None:
                        t1 = time.monotonic()
                        gen, _, ghttp = start_proc("s3_generator", gen_args, gport, root / "gp-generator")
                        restart_s.append(time.monotonic() - t1)
                    if proc.returncode == 0:
                        break
                    continue
                _, err = proc.communicate(timeout=3600)
                if proc.returncode != 0:
                    raise SystemExit(f"precompute after the kills failed:\n{err}")
                break
            chaos_s = time.monotonic() - t0
            answers_last = handled(ghttp, "s3.v1.Generator", "Answer")
        final = namespace_values(r, "chaos")
        ref = namespace_values(r, "clean")

        def content(raw: bytes) -> dict[str, Any]:
            d = json.loads(raw)
            d.pop("created_at", None)
            return d

        differs = sum(1 for k, v in final.items()
                      if content(v) != content(ref.get(k.replace(b"chaos:", b"clean:", 1), b"{}")))
        return {"questions": len(questions), "baselines": len(expected), "batch": args.batch, "runs": runs,
                "kills": kills, "stored_at_kill": stored_at_kill, "errors": errors[:3],
                "missing": len(expected - set(final)), "extra": len(set(final) - expected),
                "recomputed": sum(1 for k, v in before.items() if final.get(k) != v),
                "differs_from_uninterrupted": differs, "answer_rpcs_last_generator": answers_last,
                "clean_seconds": clean_s, "chaos_seconds": chaos_s, "generator_restart_seconds": restart_s}
    finally:
        stop_proc(gen)
        red.stop()


# --- 3. Redis killed / shut down under the controller ----------------------------------------------------

def redis_fault(root: Path, w: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import yaml
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from s3core.cache.baseline import BaselineCache
    from s3core.errors import S3Error
    from s3core.jobs.client import ControllerClient
    from s3core.rpc.tls import open_channel

    red = RedisProcess(root / "redis-controller")
    red.start()
    ctl_args = ["--redis-url", red.url, "--state-dir", str(root / "ctl-state"), "--max-running", "1",
                "--worker-threads", "1", "--reconcile-interval", "0.25", "--heartbeat-interval", "0.5"]
    out: dict[str, Any] = {}
    seq = iter(range(10**9))

    def spec() -> str:
        return yaml.safe_dump({"kind": "index", "presets": ["embedded"],
                               "job": {"corpus": "world/corpus.jsonl", "out": f"idx-{next(seq)}"}})

    try:
        with service("s3_controller", ctl_args, root / "controller", timeout=60) as ctl:
            client = ControllerClient(ctl.target, timeout=10)
            client.wait_ready(30)
            health = health_pb2_grpc.HealthStub(open_channel(ctl.target))

            def serving() -> bool:
                try:
                    return health.Check(health_pb2.HealthCheckRequest(service="s3.v1.Controller"),
                                        timeout=2).status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    return False

            acked_jobs = [client.submit(spec(), workdir=str(w["root"])).id for _ in range(args.jobs)]
            BaselineCache(red.client(), namespace="bench").put_many(baseline_entries("seed", args.entries))
            for how in ("SIGKILL", "SHUTDOWN"):
                tag = how.lower()
                acked_batches: list[list[Any]] = []
                stop_writing = threading.Event()
                write_errors: collections.Counter[str] = collections.Counter()

                def writer(tag: str = tag, acked: list[list[Any]] = acked_batches,
                           stop: threading.Event = stop_writing, errs: collections.Counter[str] = write_errors
                           ) -> None:
                    cache = BaselineCache(red.client(), namespace="bench")
                    while not stop.is_set():
                        batch = baseline_entries(tag, 8, 8 * len(acked))
                        try:
                            cache.put_many(batch)
                        except S3Error as exc:
                            errs[type(exc).__name__] += 1
                            return
                        acked.append(batch)

                def submitter(acked: list[str] = acked_jobs, stop: threading.Event = stop_writing,
                              errs: collections.Counter[str] = write_errors) -> None:
                    c = ControllerClient(ctl.target, timeout=10)
                    while not stop.is_set():
                        try:
                            acked.append(c.submit(spec(), workdir=str(w["root"])).id)
                        except S3Error as exc:
                            errs[f"submit {type(exc).__name__}"] += 1
                            return
                        time.sleep(0.05)

                threads = [threading.Thread(target=writer), threading.Thread(target=submitter)]
                for t in threads:
                    t.start()
                time.sleep(1.0)  # writing and submitting when Redis goes
                values = namespace_values(red.client(), "bench")  # before: what is stored
                if how == "SIGKILL":
                    red.kill()
                else:
                    red.shutdown()
                t_down = time.monotonic()
                # the controller while Redis is down: every 0.1 s one GetJob and a health check
                codes: collections.Counter[str] = collections.Counter()
                not_serving_after = None
                while time.monotonic() - t_down < args.down:
                    try:
                        client.get(acked_jobs[0])
                        codes["OK"] += 1
                    except S3Error as exc:
                        codes["UNAVAILABLE" if "UNAVAILABLE" in str(exc) else type(exc).__name__] += 1
                    if not_serving_after is None and not serving():
                        not_serving_after = time.monotonic() - t_down
                    time.sleep(0.1)
                stop_writing.set()
                for t in threads:
                    t.join(timeout=60)
                load_s = red.start()
                t_up = time.monotonic()
                while not serving():
                    if time.monotonic() - t_up > 60:
                        raise SystemExit("the controller did not serve again within 60 s")
                    time.sleep(0.02)
                serving_s = time.monotonic() - t_up
                r = red.client()
                after = namespace_values(r, "bench")
                present = set(after)
                keyed = BaselineCache(r, namespace="bench")
                lost_entries = sum(1 for b in acked_batches for k, _ in b if keyed.redis_key(k).encode() not in present)
                # a batch is one MULTI/EXEC: the acknowledged ones and the one in flight at the stop must be
                # there whole or not at all
                partial = 0
                for i in range(len(acked_batches) + 1):
                    there = [keyed.redis_key(k).encode() in present for k, _ in baseline_entries(tag, 8, 8 * i)]
                    partial += any(there) and not all(there)
                changed = sum(1 for k, v in values.items() if after.get(k) != v)
                jobs_after = {j.id: j.state for j in client.list(limit=1000)}
                out[tag] = {
                    "acked_batches": len(acked_batches), "lost_entries": lost_entries, "partial_batches": partial,
                    "entries_before": len(values), "entries_after": len(after), "changed_entries": changed,
                    "acked_jobs": len(acked_jobs), "lost_jobs": sum(1 for j in acked_jobs if j not in jobs_after),
                    "job_states": dict(collections.Counter(jobs_after.values())),
                    "writer_errors": dict(write_errors), "controller_while_down": dict(codes),
                    "not_serving_after_s": not_serving_after, "aof_load_s": load_s,
                    "controller_serving_after_s": serving_s,
                    "aof_bytes": sum(f.stat().st_size for f in red.data.rglob("appendonly*") if f.is_file()),
                }
            for job_id, state in {j.id: j.state for j in client.list(limit=1000)}.items():
                if state in ("pending", "running"):
                    with contextlib.suppress(S3Error):
                        client.cancel(job_id, "bench over")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(j.state == "running" for j in client.list(limit=1000)):
                time.sleep(0.25)
    finally:
        red.stop()
    return out


# --- 4. fsync policy ---------------------------------------------------------------------------------------

def fsync_cost(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from s3core.cache.baseline import BaselineCache

    out = {}
    entries = baseline_entries("fsync", args.entries)
    for policy in ("everysec", "always"):
        red = RedisProcess(root / f"redis-{policy}", appendfsync=policy)
        red.start()
        try:
            cache = BaselineCache(red.client(), namespace="bench")
            t0 = time.perf_counter()
            for i in range(0, len(entries), 8):
                cache.put_many(entries[i : i + 8])
            out[policy] = len(entries) / (time.perf_counter() - t0)
        finally:
            red.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    figures: dict[str, Any] = {}
    lost = 0
    with tempfile.TemporaryDirectory(prefix="s3-faults-") as tmp:
        root = Path(tmp)
        w = build_world(root, n_questions=max(32, args.questions))
        if "retriever" in args.scenarios:
            r = figures["retriever"] = retriever_fault(root, w, args)
            lost += r["lost"]
            print(f"retriever SIGKILLed {r['kills']}x (down {args.down:g} s each) during {r['asked']} concurrent "
                  f"rollouts: returned {r['returned']}/{r['asked']} episodes, lost {r['lost']}, failed RPCs "
                  f"{r['failed_rpcs']}, searcher retrieval retries {r['retrieval_retries']:g}, {r['seconds']:.1f} s",
                  flush=True)
            for e in r["errors"]:
                print(f"  error: {e}")
        if "generator" in args.scenarios:
            g = figures["generator"] = generator_fault(root, w, args)
            lost += g["missing"] + g["extra"] + g["recomputed"]
            print(f"generator SIGKILLed {g['kills']}x during precompute of {g['baselines']} baselines (batch "
                  f"{g['batch']}; killed at {g['stored_at_kill']} stored): {g['runs']} CLI runs, missing "
                  f"{g['missing']}, extra {g['extra']}, recomputed {g['recomputed']}, content differing from the "
                  f"uninterrupted run {g['differs_from_uninterrupted']}; {g['chaos_seconds']:.1f} s vs "
                  f"{g['clean_seconds']:.1f} s uninterrupted (generator restarts "
                  f"{', '.join(f'{x:.1f}' for x in g['generator_restart_seconds'])} s)", flush=True)
            for e in g["errors"]:
                print(f"  CLI: {e}")
        if "redis" in args.scenarios:
            red = figures["redis"] = redis_fault(root, w, args)
            for how, x in red.items():
                lost += x["lost_entries"] + x["partial_batches"] + x["changed_entries"] + x["lost_jobs"]
                print(f"redis {how.upper()} under the controller (writing and submitting, down {args.down:g} s): "
                      f"{x['acked_batches']} acknowledged batches of 8 -> lost entries {x['lost_entries']}, partial "
                      f"batches {x['partial_batches']}; {x['entries_before']} entries stored before -> "
                      f"{x['entries_after']} after, changed {x['changed_entries']}; {x['acked_jobs']} acknowledged "
                      f"jobs -> lost {x['lost_jobs']} (states {x['job_states']}); writers stopped by "
                      f"{x['writer_errors']}; controller while down: {x['controller_while_down']}, NOT_SERVING "
                      f"after {x['not_serving_after_s'] or float('nan'):.2f} s; AOF "
                      f"{x['aof_bytes'] / 2**20:.1f} MB loaded in {x['aof_load_s']:.2f} s, controller serving "
                      f"{x['controller_serving_after_s']:.2f} s after Redis", flush=True)
        if "fsync" in args.scenarios:
            f = figures["fsync"] = fsync_cost(root, args)
            print(f"appendfsync everysec: {f['everysec']:.0f} entries/s, always: {f['always']:.0f} entries/s "
                  f"(batches of 8, one MULTI/EXEC each)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    r = figures.get("retriever")
    print(f"ratio={r['returned'] / r['asked']:.4f}" if r else f"ratio={1.0 if lost == 0 else 0.0:.4f}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
