"""JSONClient (the openai backends' HTTP): keep-alive reuse, retries with backoff, no retry on 4xx."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from s3core.errors import InvalidArgument, Unavailable
from s3core.generation.openai_http import JSONClient


class Server:
    def __init__(self) -> None:
        self.script: list[int] = []  # statuses to answer with first (then 200)
        self.calls = 0
        self.connections: set[tuple[str, int]] = set()
        self.close_after_each = False
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.calls += 1
                    outer.connections.add(self.client_address)
                    status = outer.script.pop(0) if outer.script else 200
                data = json.dumps({"echo": body, "status": status}).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if outer.close_after_each:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                if outer.close_after_each:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_sequential_requests_reuse_one_connection(server: Server) -> None:
    c = JSONClient(server.url, backoff=0.01)
    for i in range(10):
        assert c.request("POST", "/x", {"i": i})["echo"] == {"i": i}
    assert c.connections_opened == 1 and len(server.connections) == 1
    c.close()


def test_concurrent_requests_pool_connections(server: Server) -> None:
    c = JSONClient(server.url, max_idle=4)
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert len(list(pool.map(lambda i: c.request("POST", "/x", {"i": i}), range(4)))) == 4
    assert c.connections_opened <= 4 + 2  # ~one per concurrent request, reused across the rounds
    assert server.calls == 12


def test_transient_failures_are_retried_with_backoff(server: Server) -> None:
    server.script = [503, 429, 502]
    c = JSONClient(server.url, retries=3, backoff=0.05)
    t0 = time.perf_counter()
    assert c.request("POST", "/x", {"a": 1})["status"] == 200
    assert c.retried == 3 and server.calls == 4
    assert time.perf_counter() - t0 >= 0.05 * (0.5 + 1 * 0.5 + 0.5 * 0)  # it did back off


def test_retries_run_out_into_unavailable(server: Server) -> None:
    server.script = [503] * 5
    c = JSONClient(server.url, retries=2, backoff=0.01)
    with pytest.raises(Unavailable, match=r"503.*after 2 retries"):
        c.request("POST", "/x", {})
    assert server.calls == 3


def test_client_errors_are_not_retried(server: Server) -> None:
    server.script = [400]
    c = JSONClient(server.url, retries=3, backoff=0.01)
    with pytest.raises(InvalidArgument, match="400"):
        c.request("POST", "/x", {})
    assert server.calls == 1 and c.retried == 0


def test_server_closing_connections_is_handled(server: Server) -> None:
    server.close_after_each = True
    c = JSONClient(server.url, retries=0)
    for i in range(3):
        assert c.request("POST", "/x", {"i": i})["echo"] == {"i": i}
    assert c.connections_opened == 3  # a closed connection is never reused


def test_unreachable_is_unavailable_quickly() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = JSONClient(f"http://127.0.0.1:{port}/v1", retries=2, backoff=0.01, timeout=5)
    t0 = time.perf_counter()
    with pytest.raises(Unavailable, match="cannot be reached"):
        c.request("POST", "/x", {})
    assert time.perf_counter() - t0 < 2
