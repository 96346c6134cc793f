"""The OpenAI-compatible backend against a real tiny HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from s3core.config import GeneratorConfig
from s3core.errors import InvalidArgument, Unavailable
from s3core.generation import answer, make_generator
from s3core.generation.openai_backend import OpenAIGenerator
from s3core.types import Doc


class FakeOpenAI:
    """Answers /v1/chat/completions deterministically: ``reply to: <last user message>``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.fail_with = 0  # HTTP status to answer with, 0 = answer normally
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]})
                else:
                    self._json(404, {"error": "no such route"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    time.sleep(outer.delay)
                    if self.path != "/v1/chat/completions":
                        self._json(404, {"error": "no such route"})
                    elif outer.fail_with:
                        self._json(outer.fail_with, {"error": {"message": f"scripted failure {outer.fail_with}"}})
                    else:
                        last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
                        words = f"reply to: {last}".split()[: body["max_tokens"]]
                        text = " ".join(words)
                        self._json(200, {
                            "id": "cmpl-1",
                            "object": "chat.completion",
                            "model": body["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)},
                        })
                finally:
                    with lock:
                        outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[FakeOpenAI]:
    srv = FakeOpenAI()
    yield srv
    srv.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be concise."}, {"role": "user", "content": text}]


def test_batch_is_concurrent_ordered_and_counted(server: FakeOpenAI) -> None:
    server.delay = 0.2
    gen = OpenAIGenerator(server.base_url, "my-model", api_key="sk-test", max_batch_size=4)
    try:
        out = gen.generate([conv(f"question {i}") for i in range(6)], max_new_tokens=5, stop=["\n\n"])
    finally:
        gen.close()
    assert out.texts == [f"reply to: question {i}" for i in range(6)]
    assert out.usage.prompt_tokens == 6 * 7 and out.usage.completion_tokens == 6 * 4
    assert server.max_in_flight >= 2
    body = server.requests[0]
    assert body["model"] == "my-model" and body["temperature"] == 0.0
    assert body["max_tokens"] == 5 and body["stop"] == ["\n\n"]
    assert body["messages"][0] == {"role": "system", "content": "Be concise."}
    assert server.headers[0].get("Authorization") == "Bearer sk-test"


def test_max_tokens_and_stop_cut(server: FakeOpenAI) -> None:
    gen = OpenAIGenerator(server.base_url, "m")
    assert gen.complete([conv("one two three four")], max_new_tokens=3) == ["reply to: one"]
    assert gen.last_usage.completion_tokens == 3
    # a stop string the endpoint ignored is still honoured client-side
    assert gen.complete([conv("alpha beta")], max_new_tokens=10, stop=["beta"]) == ["reply to: alpha "]
    assert "Authorization" not in server.headers[0]
    assert gen.generate([conv("x")], max_new_tokens=0).texts == [""]


def test_model_discovered_from_endpoint(server: FakeOpenAI) -> None:
    cfg = GeneratorConfig(backend="openai", base_url=server.base_url + "/")  # embedded id -> ask /models
    gen = make_generator(cfg)
    assert gen.backend == "openai"
    answers = answer(gen, [("Who designed it?", [Doc("1", "Bridge", "Thomas Hale designed it.")])], 32)
    assert gen.name == "served-model"
    assert server.requests[0]["model"] == "served-model"
    assert answers[0].startswith("reply to: Answer the question")


def test_unreachable_endpoint_is_unavailable() -> None:
    gen = OpenAIGenerator(f"http://127.0.0.1:{_free_port()}/v1", "m", timeout=5)
    t0 = time.perf_counter()
    with pytest.raises(Unavailable, match="cannot be reached"):
        gen.generate([conv("hi")], max_new_tokens=4)
    assert time.perf_counter() - t0 < 5


def test_http_errors_are_mapped(server: FakeOpenAI) -> None:
    gen = OpenAIGenerator(server.base_url, "m")
    server.fail_with = 503
    with pytest.raises(Unavailable, match="503"):
        gen.generate([conv("hi")], max_new_tokens=4)
    server.fail_with = 400
    with pytest.raises(InvalidArgument, match="scripted failure 400"):
        gen.generate([conv("hi")], max_new_tokens=4)


def test_bad_base_url_is_a_config_error() -> None:
    from s3core.errors import ConfigError

    with pytest.raises(ConfigError):
        OpenAIGenerator("", "m")
    with pytest.raises(ConfigError):
        OpenAIGenerator("vllm:8000/v1", "m")


def test_registry_errors() -> None:
    import importlib.util

    from s3core.errors import ConfigError

    cfg = GeneratorConfig()
    cfg.backend = "nope"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="unknown generator.backend"):
        make_generator(cfg)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="gpu extra"):
            make_generator(GeneratorConfig(backend="vllm"))
