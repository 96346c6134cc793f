"""Sharded serving end to end: real `python -m s3_retriever` processes on loopback.

A synthetic corpus is indexed twice with the embedded MiniLM encoder: once whole, once as a
2-shard set (``build_index(shards=2)``).  Servers (started in parallel):

* ``shard0`` serves shard 0 alone; ``shard1`` serves shard 1 alone and the whole index;
* ``combined`` serves the set directory (both shards in one process, as one index).

Checked: the client fan-out over the shard servers (``host0,host1``) and the combined server give
what one server over the whole index gives (ids and scores); the searcher service pointed at the
comma-separated address runs episodes whose naive-RAG block is the whole index's; a server whose
set lacks a shard, or has a shard that fails to load, stays NOT_SERVING and says which shard;
killing a shard server makes searches fail with Unavailable, never return partial results (last).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import retriever_pb2, retriever_pb2_grpc
from s3core.cache.keys import index_fingerprint
from s3core.errors import InvalidArgument, Unavailable
from s3core.rpc.clients import RetrieverClient, retriever_client
from s3core.rpc.retry import RetryingSearch, RetryPolicy
from s3core.rpc.sharded import ShardedRetrieverClient

DENSE = {"max_seq_length": 64, "batch_size": 32}
KS = (1, 3, 10, 60, 100)  # 60 and 100: more than a shard holds


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("shard-world")
    synthesize(root / "data", seed=9, n_entities=50, n_questions=8)
    corpus = root / "data" / "corpus.jsonl"
    build_index(corpus, "dense", root / "whole", show_progress=False, params=DENSE)
    build_index(corpus, "dense", root / "wset", show_progress=False, params=DENSE, shards=2)
    questions = list(load_questions(root / "data" / "synth_1hop.jsonl"))
    build_tiny_model(root / "tiny", texts=[q.question for q in questions])
    shards = sorted(str(p) for p in (root / "wset").glob("shard-*-of-*"))
    assert len(shards) == 2
    return {"root": root, "whole": root / "whole", "set": root / "wset", "shards": shards, "questions": questions,
            "model": root / "tiny"}


@contextlib.contextmanager
def started(service_runner: Any, specs: list[tuple[str, list[str], Path]]) -> Iterator[list[Any]]:
    """Start several services at once (they load in parallel); stop them all afterwards."""
    cms = [service_runner(module, args, workdir, 240.0) for module, args, workdir in specs]
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(cms)) as pool:
        futures = [pool.submit(cm.__enter__) for cm in cms]
        services, error = [], None
        for cm, fut in zip(cms, futures):
            try:
                services.append(fut.result())
                stack.push(cm)
            except BaseException as exc:  # noqa: BLE001 - stop the others, then report the first failure
                error = error or exc
        if error is not None:
            raise error
        yield services


@pytest.fixture(scope="module")
def servers(world: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    def wd(name: str) -> Path:
        return tmp_path_factory.mktemp(name)

    specs = [
        ("s3_retriever", ["--index", world["shards"][0], "--threads", "1"], wd("shard0")),
        ("s3_retriever", ["--index", world["shards"][1], "--index", str(world["whole"]), "--threads", "1"],
         wd("shard1")),
        ("s3_retriever", ["--index", str(world["set"]), "--threads", "1"], wd("combined")),
    ]
    with started(service_runner, specs) as (s0, s1, combined):
        yield {"shard0": s0, "shard1": s1, "combined": combined,
               "fanout": f"{s0.grpc_target},{s1.grpc_target}"}


def _ranked(results: list[list[Any]]) -> list[list[tuple[str, float]]]:
    return [[(d.id, round(d.score, 5)) for d in r] for r in results]


def test_fanout_and_combined_equal_one_index(servers: dict[str, Any], world: dict[str, Any]) -> None:
    queries = [q.question for q in world["questions"]] + ["a band that plays dream pop", "river"]
    with retriever_client(servers["fanout"], timeout=30) as fan, \
            RetrieverClient(servers["shard1"].grpc_target, timeout=30) as one, \
            RetrieverClient(servers["combined"].grpc_target, timeout=30) as combined:
        assert isinstance(fan, ShardedRetrieverClient)
        fan.wait_ready(60)
        for k in KS:
            ref = one.search(queries, k, index="whole")
            assert _ranked(fan.search(queries, k)) == _ranked(ref), k
            assert _ranked(combined.search(queries, k)) == _ranked(ref), k
        # both views of the set describe the same index (so naive-RAG baselines are shared)
        lf, lc = fan.list_indexes(), combined.list_indexes()
        assert lf.default_index == lc.default_index == "wset"
        (fi,), (ci,) = lf.indexes, lc.indexes
        assert fi.num_documents == ci.num_documents
        assert index_fingerprint(fi) == index_fingerprint(ci)
        whole = next(i for i in one.list_indexes().indexes if i.name == "whole")
        assert fi.num_documents == whole.num_documents and fi.corpus_sha256 == whole.corpus_sha256


def test_lone_shard_lists_its_shard_block(servers: dict[str, Any]) -> None:
    import json

    with RetrieverClient(servers["shard0"].grpc_target, timeout=30) as c:
        (info,) = c.list_indexes().indexes
    block = json.loads(info.params_json)["shard"]
    assert block["index"] == 0 and block["count"] == 2 and block["row_start"] == 0
    assert block["row_end"] == info.num_documents and len(block["set_id"]) == 64


def test_bad_address_lists_and_wrong_servers(servers: dict[str, Any]) -> None:
    for bad, needle in ((f"{servers['shard0'].grpc_target},", "entry 2 is empty"),
                        (f"{servers['shard0'].grpc_target},{servers['shard0'].grpc_target}", "listed twice"),
                        ("", "empty")):
        with pytest.raises(InvalidArgument, match=needle):
            retriever_client(bad)
    # the combined server is not a shard server: refused before any search
    with retriever_client(f"{servers['shard0'].grpc_target},{servers['combined'].grpc_target}", timeout=30) as c, \
            pytest.raises(InvalidArgument, match="serves no index shard"):
        c.search(["river"], 3)


def test_searcher_over_comma_separated_address(servers: dict[str, Any], world: dict[str, Any],
                                               service_runner: Any, tmp_path: Path) -> None:
    from s3core.rpc.clients import SearcherClient

    args = ["--retriever", servers["fanout"], "--model", str(world["model"]), "--threads", "1",
            "--max-batch-size", "4"]
    qs = world["questions"][:3]
    with service_runner("s3_searcher", args, tmp_path, 240.0) as srch, \
            SearcherClient(srch.grpc_target, timeout=240) as client, \
            RetrieverClient(servers["shard1"].grpc_target, timeout=30) as one:
        client.wait_ready(60)
        trajs = client.rollout(qs, {"initial_k": 4, "retrieve_k": 4, "max_turns": 1, "max_new_tokens": 8})
        ref = one.search([q.question for q in qs], 4, index="whole")
    assert len(trajs) == len(qs)
    for t, r in zip(trajs, ref):
        assert [d.id for d in t.blocks[0].docs] == [d.id for d in r]  # naive-RAG block from the sharded index


def _not_serving(args: list[str], workdir: Path, needle: str) -> None:
    """Start a retriever that must stay NOT_SERVING: its log names the problem, health and /healthz
    say not serving, Search is UNAVAILABLE, and SIGTERM ends it promptly."""
    log = workdir / "service.log"
    cmd = [sys.executable, "-m", "s3_retriever", *args, "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
           "--ready-file", str(workdir / "ready.json")]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "S3_LOG_LEVEL": "INFO"})
    try:
        deadline = time.monotonic() + 180
        while "NOT serving" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        text = log.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if "NOT serving" in ln]
        assert len(lines) == 1 and needle in lines[0], text
        port = int(re.search(r"on 127\.0\.0\.1:(\d+), HTTP", text).group(1))  # type: ignore[union-attr]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            for service in ("", "s3.v1.Retriever"):
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=10).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as ei:
                retriever_pb2_grpc.RetrieverStub(ch).Search(retriever_pb2.SearchRequest(queries=["river"], k=2),
                                                            timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and needle in ei.value.details()
        assert not (workdir / "ready.json").exists()
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_incomplete_or_broken_set_is_not_served(world: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "missing-set"
    shutil.copytree(world["set"], missing)
    shutil.rmtree(missing / Path(world["shards"][1]).name)
    broken = tmp_path / "broken-set"
    shutil.copytree(world["set"], broken)
    (broken / Path(world["shards"][1]).name / "faiss.index").write_bytes(b"\0" * 64)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(_not_serving, ["--index", str(missing)], tmp_path / "a", "shard 1 of 2"),
                pool.submit(_not_serving, ["--index", str(broken), "--index", str(world["whole"])], tmp_path / "b",
                            "shard 1 of 2")]
        for j in jobs:
            j.result()
    assert "failed to load" in (tmp_path / "b" / "service.log").read_text()
    assert "no manifest.json" in (tmp_path / "a" / "service.log").read_text()


def test_dead_shard_is_unavailable_never_partial(servers: dict[str, Any]) -> None:
    """Runs last: kills shard 0's server."""
    fan = retriever_client(servers["fanout"], timeout=10)
    assert len(fan.search(["river"], 5)[0]) == 5
    servers["shard0"].proc.kill()
    servers["shard0"].proc.wait()
    try:
        with pytest.raises(Unavailable, match=servers["shard0"].grpc_target):
            fan.search(["river"], 5)
        with pytest.raises(Unavailable):  # a fresh client checks the set first: the shard is gone
            ShardedRetrieverClient(servers["fanout"], timeout=10).search(["river"], 5)
        search = RetryingSearch(lambda: retriever_client(servers["fanout"], timeout=5),
                                RetryPolicy(retries=2, backoff_s=0.05))
        with pytest.raises(Unavailable):
            search(["river", "city"], 3)
        assert search.retries == 2
    finally:
        fan.close()
