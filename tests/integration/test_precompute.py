"""`precompute` end to end: a REAL redis-server, the REAL retriever service over a BM25 index of the
synthetic world, and the REAL generator service (embedded SmolLM2 on CPU).

Proves: a first run computes everything, a second run is all hits and makes no generator call (read
from the generator's own Prometheus /metrics), an interrupted run (Ctrl-C, or SIGKILL of the
process) keeps every batch already stored and the next run computes only the rest, and an
unreachable Redis is a clear ``Unavailable``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from s3core.cache.baseline import BaselineCache, connect
from s3core.cache.keys import index_fingerprint
from s3core.config import EMBEDDED_GENERATOR
from s3core.data import load_questions
from s3core.errors import Unavailable
from s3core.eval.precompute import filter_training_set, precompute, resolve_setup
from s3core.retrieval.index import build_index, read_manifest
from s3core.rpc.clients import GeneratorClient, RetrieverClient

K = 3
BATCH = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from s3core.data.synth import synthesize

    root = tmp_path_factory.mktemp("precompute-world")
    synthesize(root / "data", seed=3, n_questions=10)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    return {"data": root / "data", "index": root / "idx"}


@pytest.fixture(scope="module")
def services(world: dict[str, Path], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    rdir = tmp_path_factory.mktemp("retriever")
    gdir = tmp_path_factory.mktemp("generator")
    with service_runner("s3_retriever", ["--index", str(world["index"])], rdir) as ret, \
            service_runner("s3_generator", ["--backend", "hf", "--model", EMBEDDED_GENERATOR], gdir,
                           timeout=600) as gen:
        rc, gc = RetrieverClient(ret.grpc_target), GeneratorClient(gen.grpc_target)
        rc.wait_ready(60)
        gc.wait_ready(600)
        yield {"retriever": rc, "generator": gc, "ret_svc": ret, "gen_svc": gen}
        rc.close()
        gc.close()


def _questions(world: dict[str, Path], n1: int, n2: int) -> dict[str, list]:
    return {"synth_1hop": load_questions(world["data"] / "synth_1hop.jsonl", limit=n1),
            "synth_2hop": load_questions(world["data"] / "synth_2hop.jsonl", limit=n2)}


def _rpc_count(svc: Any, method: str) -> float:
    """Completed ``s3.v1.Generator/<method>`` RPCs, from the generator's /metrics endpoint."""
    with urllib.request.urlopen(svc.http_base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name != "grpc_server_handled":
            continue
        for s in fam.samples:
            if (s.name == "grpc_server_handled_total" and s.labels.get("grpc_service") == "s3.v1.Generator"
                    and s.labels.get("grpc_method") == method):
                total += s.value
    return total


def test_cold_then_warm(world: dict[str, Path], services: dict, redis_url: str, tmp_path: Path) -> None:
    cache = BaselineCache(connect(redis_url), namespace="warm", url=redis_url)
    sets = _questions(world, 3, 2)
    ret, gen = services["retriever"], services["generator"]
    setup = resolve_setup(ret, gen, K, judge=True)
    # the key's index part is the index the service loaded, as its manifest describes it
    assert setup.index_fingerprint == index_fingerprint(read_manifest(world["index"]))

    a0 = _rpc_count(services["gen_svc"], "Answer")
    cold = precompute(sets, ret, gen, cache, k=K, judge=True, batch_size=BATCH, show_progress=False)
    a1 = _rpc_count(services["gen_svc"], "Answer")
    assert (cold.hits, cold.misses, cold.written) == (0, 5, 5)
    assert a1 - a0 == 3  # synth_1hop: 2 batches (2 + 1), synth_2hop: 1 batch
    assert cache.count() == 5
    for ds, r in cold.per_dataset.items():
        assert r.n == len(sets[ds]) and 0.0 <= r.genacc <= 1.0 and r.em <= r.genacc

    j1 = _rpc_count(services["gen_svc"], "Judge")
    warm = precompute(sets, ret, gen, cache, k=K, judge=True, batch_size=BATCH, show_progress=False)
    assert (warm.hits, warm.misses, warm.written) == (5, 0, 0)
    assert _rpc_count(services["gen_svc"], "Answer") == a1  # no generator call at all
    assert _rpc_count(services["gen_svc"], "Judge") == j1
    assert (warm.genacc, warm.em) == (cold.genacc, cold.em)

    # stored records are the naive top-k answers
    rec = cache.get(setup.key_fn()(sets["synth_1hop"][0]))
    assert rec is not None and len(rec.doc_ids) == K and rec.question_id == sets["synth_1hop"][0].id

    # the training-set filter reads these baselines
    out = tmp_path / "train.jsonl"
    fs = filter_training_set(sets, cache, setup.key_fn(), out)
    assert fs.total == 5 and fs.kept + fs.dropped_rag_correct + fs.dropped_yes_no == 5
    n_correct = round(sum(r.genacc * r.n for r in cold.per_dataset.values()))
    assert fs.dropped_rag_correct == n_correct
    assert len(load_questions(out)) == fs.kept


def test_resume_after_ctrl_c(world: dict[str, Path], services: dict, redis_url: str) -> None:
    cache = BaselineCache(connect(redis_url), namespace="ctrlc", url=redis_url)
    sets = {"synth_1hop": load_questions(world["data"] / "synth_1hop.jsonl", limit=4)}
    ret, gen = services["retriever"], services["generator"]

    def interrupt(ds: str, written: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C right after the first batch was stored

    with pytest.raises(KeyboardInterrupt):
        precompute(sets, ret, gen, cache, k=K, judge=True, batch_size=BATCH, show_progress=False,
                   on_batch=interrupt)
    assert cache.count() == BATCH
    a0 = _rpc_count(services["gen_svc"], "Answer")
    s = precompute(sets, ret, gen, cache, k=K, judge=True, batch_size=BATCH, show_progress=False)
    assert (s.hits, s.misses, s.written) == (2, 2, 2)
    assert _rpc_count(services["gen_svc"], "Answer") - a0 == 1


KILL_SCRIPT = r"""
import os, signal, sys
from s3core.cache.baseline import BaselineCache, connect
from s3core.data import load_questions
from s3core.eval.precompute import precompute
from s3core.rpc.clients import GeneratorClient, RetrieverClient

url, qfile, ret, gen = sys.argv[1:5]
cache = BaselineCache(connect(url), namespace="sigkill", url=url)
sets = {"synth_2hop": load_questions(qfile, limit=4)}

def die(ds, written):
    print("stored", written, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind

precompute(sets, RetrieverClient(ret), GeneratorClient(gen), cache, k=int(sys.argv[5]), judge=True,
           batch_size=int(sys.argv[6]), show_progress=False, on_batch=die)
"""


def test_resume_after_sigkill(world: dict[str, Path], services: dict, redis_url: str) -> None:
    qfile = world["data"] / "synth_2hop.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, redis_url, str(qfile), services["ret_svc"].grpc_target,
         services["gen_svc"].grpc_target, str(K), str(BATCH)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == f"stored {BATCH}"
    cache = BaselineCache(connect(redis_url), namespace="sigkill", url=redis_url)
    assert cache.count() == BATCH
    a0 = _rpc_count(services["gen_svc"], "Answer")
    sets = {"synth_2hop": load_questions(qfile, limit=4)}
    s = precompute(sets, services["retriever"], services["generator"], cache, k=K, judge=True, batch_size=BATCH,
                   show_progress=False)
    assert (s.hits, s.misses, s.written) == (2, 2, 2)
    assert _rpc_count(services["gen_svc"], "Answer") - a0 == 1


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # closed on exit: nothing listens there


def test_redis_down(world: dict[str, Path], services: dict) -> None:
    url = _dead_url()
    with pytest.raises(Unavailable, match=f"redis at {url} unreachable"):
        connect(url, timeout=0.5)
    # a cache whose Redis went away after connecting: precompute stops before any generator call
    import redis

    cache = BaselineCache(redis.Redis.from_url(url, socket_connect_timeout=0.5), url=url)
    a0 = _rpc_count(services["gen_svc"], "Answer")
    with pytest.raises(Unavailable, match=f"redis at {url} unreachable"):
        precompute(_questions(world, 2, 0), services["retriever"], services["generator"], cache, k=K, judge=True,
                   batch_size=BATCH, show_progress=False)
    assert _rpc_count(services["gen_svc"], "Answer") == a0


def test_export_import_between_real_redis(world: dict[str, Path], redis_url: str, tmp_path: Path) -> None:
    """People share exports: what one Redis exported, another imports (needs the warm test's data)."""
    src = BaselineCache(connect(redis_url), namespace="warm", url=redis_url)
    if src.count() == 0:
        pytest.skip("runs after test_cold_then_warm")
    path = tmp_path / "shared.json"
    n = src.export_json(path)
    assert json.loads(path.read_text())["count"] == n
    dst = BaselineCache(connect(redis_url), namespace="imported", url=redis_url)
    res = dst.import_json(path)
    assert res.written == n and dst.count() == n
