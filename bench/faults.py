"""Fault injection with figures: what was tried, what was lost.

1. **retriever killed during a batch of rollouts**: ``--rollouts`` Rollout RPCs (one question
   each, one search turn, the tiny Qwen2 policy) run concurrently against the searcher; while they
   run the retriever is SIGKILLed and restarted on the same port ``--down`` seconds later, ``--kills``
   times.  Counted: episodes asked for, episodes returned, RPCs failed (lost = asked - returned).
2. **Redis restarted** (AOF, ``appendfsync everysec`` as ``s3 up`` runs it): ``--entries`` naive-RAG
   baseline entries written through ``BaselineCache``; Redis stopped with SIGTERM and started again
   on the same data dir; then written again, SIGKILLed 1.5 s after the last write (past the
   1 s fsync window) and started again.  Counted: entries present after each restart.

The last line is ``ratio=X.XXXX`` = episodes returned / asked for (1.0 = nothing lost).
Related tests: tests/integration/test_searcher_service.py (retriever restart between rollouts),
test_precompute.py (precompute resumed after SIGKILL), test_controller.py (Redis and controller
restarts keep every job), test_train_loop.py (learner killed mid-run).

    .venv/bin/python bench/faults.py --rollouts 24 --kills 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rollouts", type=int, default=32, help="concurrent Rollout RPCs in the batch (default 32)")
    p.add_argument("--kills", type=int, default=2, help="retriever kills during the batch (default 2)")
    p.add_argument("--down", type=float, default=1.5, help="seconds the retriever stays down (default 1.5)")
    p.add_argument("--entries", type=int, default=2000, help="baseline cache entries written (default 2000)")
    return p.parse_args(argv)


def start_retriever(index: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    ready = work / "ready.json"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "s3_retriever", "--index", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--http-port", "0", "--threads", "1", "--ready-file", str(ready)]
    with (work / "service.log").open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"retriever did not restart:\n{(work / 'service.log').read_text(errors='replace')}")
        time.sleep(0.05)
    return proc


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


def redis_fault(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from s3core.cache.baseline import BaselineCache, BaselineRecord
    from s3core.cache.keys import BaselineKey
    from s3core.runtime.redis_server import find_redis_server, redis_command

    binary = find_redis_server()
    data = root / "redis"
    data.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(redis_command(binary, port, data), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                BaselineCache.from_url(url).count()
                return proc
            except Exception:  # noqa: BLE001 - not up yet (or still loading the AOF)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def entries(tag: str) -> list[tuple[BaselineKey, BaselineRecord]]:
        return [(BaselineKey(dataset="bench", question=f"{tag} question {i}", index_fingerprint="f" * 16, k=3,
                             generator_model="tiny", prompt_version="v1", judge_id="none"),
                 BaselineRecord(question_id=f"{tag}-{i}", answer=f"answer {i}", genacc=i % 2 == 0, em=False, f1=0.5,
                                span=False, judge=None, doc_ids=(str(i),)))
                for i in range(args.entries)]

    out: dict[str, Any] = {}
    proc = start()
    try:
        cache = BaselineCache.from_url(url)
        cache.put_many(entries("a"))
        written = cache.count()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proc = start()
        after_term = BaselineCache.from_url(url).count()
        out["sigterm"] = {"written": written, "present": after_term, "lost": written - after_term}
        cache = BaselineCache.from_url(url)
        cache.put_many(entries("b"))
        written = cache.count()
        time.sleep(1.5)  # past appendfsync everysec
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc = start()
        after_kill = BaselineCache.from_url(url).count()
        sample = BaselineCache.from_url(url).get(entries("b")[-1][0])
        out["sigkill"] = {"written": written, "present": after_kill, "lost": written - after_kill,
                          "last_entry_intact": sample is not None and sample.answer == f"answer {args.entries - 1}"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="s3-faults-") as tmp:
        root = Path(tmp)
        w = build_world(root)
        r = retriever_fault(root, w, args)
        print(f"retriever SIGKILLed {r['kills']}x (down {args.down:g} s each) during {r['asked']} concurrent rollouts: "
              f"returned {r['returned']}/{r['asked']} episodes, lost {r['lost']}, failed RPCs {r['failed_rpcs']}, "
              f"searcher retrieval retries {r['retrieval_retries']:g}, {r['seconds']:.1f} s")
        for e in r["errors"]:
            print(f"  error: {e}")
        red = redis_fault(root, args)
        for how, x in red.items():
            print(f"redis restarted after {how.upper()}: {x['present']}/{x['written']} baseline entries present, "
                  f"lost {x['lost']}" + (f", last entry intact: {x['last_entry_intact']}" if "last_entry_intact" in x
                                         else ""))
    print(f"ratio={r['returned'] / r['asked']:.4f}")
    return 0 if r["lost"] == 0 and all(x["lost"] == 0 for x in red.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
