"""The searcher service end to end: real `python -m s3_retriever` and `python -m s3_searcher`
subprocesses on loopback, the embedded SmolLM2-135M policy, a BM25 index over the synthetic world.

Knobs stay tiny (1 search turn, <= 48 new tokens) so the whole file runs in about a minute on CPU.
The retriever-restart test kills the retriever and starts a new one on the same port; it runs last.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import searcher_pb2, searcher_pb2_grpc
from s3core.config import EMBEDDED_GENERATOR
from s3core.data.io import load_questions
from s3core.errors import FailedPrecondition, InvalidArgument, NotFound, S3Error
from s3core.rpc.clients import SearcherClient
from s3core.search.context import build_context
from s3core.search.episode import decode
from s3core.search.trajectory import Trajectory

KNOBS = {"initial_k": 3, "retrieve_k": 3, "max_turns": 1, "max_new_tokens": 48}
SMALL = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    root = tmp_path_factory.mktemp("searcher-world")
    synthesize(root / "data", seed=5, n_questions=10)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    questions = load_questions(root / "data" / "synth_1hop.jsonl")
    return {"root": root, "index": root / "idx", "questions": list(questions)}


@pytest.fixture(scope="module")
def retriever(world: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    workdir = tmp_path_factory.mktemp("searcher-retriever")
    with service_runner("s3_retriever", ["--index", str(world["index"])], workdir) as svc:
        yield svc


@pytest.fixture(scope="module")
def searcher(retriever: Any, service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    workdir = tmp_path_factory.mktemp("searcher-service")
    args = ["--retriever", retriever.grpc_target, "--threads", "1", "--max-batch-size", "8"]
    with service_runner("s3_searcher", args, workdir, timeout=300) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(searcher: Any) -> Iterator[SearcherClient]:
    c = SearcherClient(searcher.grpc_target, timeout=300)
    c.wait_ready(timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(searcher: Any) -> Iterator[searcher_pb2_grpc.SearcherStub]:
    ch = grpc.insecure_channel(searcher.grpc_target)
    yield searcher_pb2_grpc.SearcherStub(ch)
    ch.close()


@pytest.fixture(scope="module")
def model_dir() -> str:
    from s3core.generation.models import resolve_model

    return resolve_model(EMBEDDED_GENERATOR)


@pytest.fixture(scope="module")
def tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _metrics(svc: Any) -> str:
    with urllib.request.urlopen(svc.http_base + "/metrics", timeout=10) as resp:
        return resp.read().decode("utf-8")


def _metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def check_trajectory(t: Trajectory, tokenizer: Any, knobs: dict[str, int], version: int) -> None:
    assert t.blocks and t.blocks[0].index == 0 and t.blocks[0].query == ""
    assert len(t.blocks[0].docs) == knobs["initial_k"]
    assert 1 <= len(t.turns) <= knobs["max_turns"] + 1
    assert len(t.blocks) <= knobs["max_turns"] + 1
    assert len(t.token_ids) == len(t.action_mask) > t.prompt_length > 0
    assert not any(t.action_mask[: t.prompt_length])
    actions = [i for i, m in zip(t.token_ids, t.action_mask) if m]
    assert decode(tokenizer, actions, skip_special=True) == "".join(turn.raw_text for turn in t.turns)
    for start, end in t.action_spans():
        assert end - start <= knobs["max_new_tokens"]
    assert [d.id for d in t.context] == [d.id for d in build_context(t.blocks)]
    if not any(b.has_selection for b in t.blocks):  # unselected blocks contribute all their docs
        assert t.context
    assert t.policy_version == version


# --- tests ---------------------------------------------------------------------------------------

def test_health_serving(searcher: Any) -> None:
    with grpc.insecure_channel(searcher.grpc_target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "s3.v1.Searcher"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_rollout_returns_structured_trajectories(client: SearcherClient, world: dict[str, Any], tokenizer: Any) -> None:
    questions = world["questions"][:3]
    trajs = client.rollout(questions, KNOBS)
    assert [t.question.id for t in trajs] == [q.id for q in questions]
    assert [t.question.golden_answers for t in trajs] == [tuple(q.golden_answers) for q in questions]
    for t in trajs:
        check_trajectory(t, tokenizer, KNOBS, version=0)
    stats = client.last_stats
    assert stats["generate_calls"] >= 1 and stats["search_calls"] >= 1
    assert 0 < stats["generate_seconds"] + stats["search_seconds"] <= stats["rollout_seconds"] + 1e-3
    assert stats["policy_version"] == 0


def test_rollout_stream_yields_every_episode(client: SearcherClient, world: dict[str, Any], tokenizer: Any) -> None:
    questions = world["questions"][3:5]
    got = list(client.rollout_stream(questions, SMALL, n=2, seed=3))
    assert len(got) == len(questions) * 2
    assert sorted((t.question.id, t.group_index) for t in got) == sorted(
        (q.id, g) for q in questions for g in range(2))
    for t in got:
        check_trajectory(t, tokenizer, SMALL, version=0)
    assert client.last_stats["turns"] >= len(got)


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r.ClearField("questions"), "no questions"),
    (lambda r: setattr(r.questions[0], "question", "   "), "questions[0].question is empty"),
    (lambda r: setattr(r.knobs, "retrieve_k", -1), "knobs.retrieve_k"),
    (lambda r: setattr(r.knobs, "initial_k", 1000), "knobs.initial_k"),
    (lambda r: setattr(r.knobs, "n", 17), "knobs.n"),
    (lambda r: setattr(r.knobs, "temperature", -0.5), "temperature"),
    (lambda r: setattr(r.knobs, "max_new_tokens", 100000), "knobs.max_new_tokens"),
    (lambda r: setattr(r, "expect_policy_version", -1), "expect_policy_version"),
    (lambda r: r.questions.extend([r.questions[0]] * 300), "at most"),
])
def test_bad_rollout_is_invalid_argument(stub: Any, world: dict[str, Any], mutate: Any, needle: str) -> None:
    q = world["questions"][0]
    req = searcher_pb2.RolloutRequest(knobs=searcher_pb2.SearchKnobs(**SMALL))
    req.questions.add(id=q.id, question=q.question)
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        stub.Rollout(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


def test_bad_input_via_client_and_still_serving(client: SearcherClient, world: dict[str, Any]) -> None:
    q = world["questions"][:1]
    with pytest.raises(InvalidArgument, match="select_max"):
        client.rollout(q, {**SMALL, "select_max": 0})  # 0 on the wire would mean "default": refused locally
    with pytest.raises(InvalidArgument, match="unknown search knob"):
        client.rollout(q, {"retrieve_kk": 3})
    with pytest.raises(FailedPrecondition, match="expects policy version 7"):
        client.rollout(q, SMALL, expect_version=7)
    assert client.policy_info().version == 0  # still serving


def test_load_policy_bad_path_keeps_old_policy(client: SearcherClient, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        client.load_policy(str(tmp_path / "nope"), 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="config.json"):
        client.load_policy(str(tmp_path / "empty"), 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="cannot load"):
        client.load_policy(str(broken), 1)
    with pytest.raises(InvalidArgument, match="version"):
        client.load_policy(str(broken), 0)
    info = client.policy_info()
    assert info.version == 0 and info.checkpoint_path == ""


def test_load_policy_new_version(client: SearcherClient, searcher: Any, world: dict[str, Any], model_dir: str,
                                 tokenizer: Any) -> None:
    assert client.load_policy(model_dir, 2) == 2
    info = client.policy_info()
    assert info.version == 2 and info.checkpoint_path == model_dir
    trajs = client.rollout(world["questions"][:1], SMALL, expect_version=2)
    check_trajectory(trajs[0], tokenizer, SMALL, version=2)
    with pytest.raises(FailedPrecondition):
        client.rollout(world["questions"][:1], SMALL, expect_version=1)
    assert _metric_value(_metrics(searcher), "s3_searcher_policy_version") == 2


def _start_retriever_on(port: int, index: Path, workdir: Path) -> subprocess.Popen:
    ready = workdir / "ready.json"
    cmd = [sys.executable, "-m", "s3_retriever", "--index", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--http-port", "0", "--ready-file", str(ready)]
    with (workdir / "service.log").open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, (workdir / "service.log").read_text()
        assert time.monotonic() < deadline, "restarted retriever not ready"
        time.sleep(0.05)
    return proc


def test_retriever_restart_loses_no_episode(client: SearcherClient, searcher: Any, retriever: Any,
                                            world: dict[str, Any], tokenizer: Any,
                                            tmp_path: Path) -> None:
    port = retriever.grpc_port
    retries_before = _metric_value(_metrics(searcher), "s3_searcher_retrieval_retries_total")
    retriever.proc.kill()  # the retriever dies between two rollouts ...
    retriever.proc.wait()
    restarted: list[subprocess.Popen] = []

    def restart() -> None:  # ... and comes back on the same port while the next rollout waits for it
        time.sleep(1.5)
        restarted.append(_start_retriever_on(port, world["index"], tmp_path))

    th = threading.Thread(target=restart)
    th.start()
    try:
        questions = world["questions"][5:7]
        trajs = client.rollout(questions, SMALL, expect_version=2)
        th.join()
        assert len(trajs) == len(questions)  # lost = 0
        for t in trajs:
            check_trajectory(t, tokenizer, SMALL, version=2)
        assert client.last_stats["retrieval_retries"] >= 1
        text = _metrics(searcher)
        assert _metric_value(text, "s3_searcher_retrieval_retries_total") > retries_before
        assert _metric_value(text, "s3_searcher_episodes_total") >= 3 + 4 + 1 + 2
        assert _metric_value(text, "s3_searcher_turns_total") > 0
        assert "s3_searcher_rollout_seconds_count" in text
    finally:
        th.join()
        for p in restarted:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)
            if p.poll() is None:
                p.kill()
                p.wait()


def test_ready_file_and_metrics_names(searcher: Any) -> None:
    text = _metrics(searcher)
    for name in ("s3_searcher_episodes_total", "s3_searcher_turns_total", "s3_searcher_rollout_seconds",
                 "s3_searcher_generate_seconds", "s3_searcher_search_seconds", "s3_searcher_policy_version",
                 "s3_searcher_retrieval_retries_total"):
        assert name in text, name
    assert S3Error  # the client maps every failure to s3core.errors
    assert json.loads((Path(searcher.log).parent / "ready.json").read_text())["grpc_port"] == searcher.grpc_port
