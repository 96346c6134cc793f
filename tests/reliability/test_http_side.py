"""The HTTP side-server of every service (issue 17 items 7 and 10): with a token, routes such as the
retriever's ``POST /retrieve`` need it (``/healthz`` stays open for probes, ``/metrics`` unless asked),
and half-sent requests are dropped after the read timeout instead of holding a thread forever.
A real server on loopback, real sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from s3core.rpc.http import SideServer


def _server(**kw: Any) -> SideServer:
    s = SideServer("127.0.0.1", 0, **kw)
    s.route("POST", "/retrieve", lambda body: (200, {"result": body}))
    return s.start()


@pytest.fixture()
def protected() -> Iterator[SideServer]:
    s = _server(token="s3cret")
    yield s
    s.stop()


def _call(s: SideServer, path: str, body: Any = None, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{s.port}{path}",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_routes_need_the_token(protected: SideServer) -> None:
    assert _call(protected, "/retrieve", {"queries": ["x"]})[0] == 401
    assert _call(protected, "/retrieve", {"queries": ["x"]}, token="wrong")[0] == 401
    assert _call(protected, "/retrieve", {"queries": ["x"]}, token="s3cret") == (200, '{"result": {"queries": ["x"]}}')
    assert _call(protected, "/healthz")[0] == 200  # probes
    assert _call(protected, "/livez") == (200, '{"status": "alive"}')
    assert _call(protected, "/metrics")[0] == 200  # scrapes (open unless protect_metrics / S3_AUTH_METRICS)
    assert _call(protected, "/nope")[0] == 401  # what exists is not revealed either


def test_metrics_can_be_protected_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_AUTH_TOKEN", "tok")
    monkeypatch.setenv("S3_AUTH_METRICS", "true")
    s = _server()  # token and metrics protection from the environment, as the services do
    try:
        assert _call(s, "/metrics")[0] == 401
        assert _call(s, "/metrics", token="tok")[0] == 200
        assert _call(s, "/retrieve", {}, token="tok")[0] == 200
    finally:
        s.stop()


def test_without_a_token_everything_is_open() -> None:
    s = _server(token="")
    try:
        assert _call(s, "/retrieve", {"queries": []})[0] == 200
    finally:
        s.stop()


def test_half_sent_requests_are_dropped_after_the_read_timeout() -> None:
    s = _server(token="", read_timeout=0.5)
    try:
        base = threading.active_count()
        socks = []
        for i in range(40):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            c.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" if i % 2 else
                      b"POST /retrieve HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"queries\"")
            socks.append(c)
        time.sleep(0.2)
        assert threading.active_count() >= base + 30  # each holds a handler thread ...
        assert _call(s, "/retrieve", {"queries": ["ok"]})[0] == 200  # ... and the server still serves
        deadline = time.monotonic() + 5
        while threading.active_count() > base + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= base + 2, "half-sent requests still hold threads"
        for c in socks:  # the server closed them
            try:
                assert c.recv(65536) == b""
            except ConnectionResetError:
                pass
            c.close()
        assert s.httpd.request_queue_size >= 128
    finally:
        s.stop()


def test_liveness_does_not_ask_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    """/livez answers 200 while /healthz says the service is not ready (a dependency down), even with the
    metrics protected: kubelet's liveness probe sends no token."""
    monkeypatch.setenv("S3_AUTH_METRICS", "true")
    asked: list[bool] = []

    def ready() -> bool:
        asked.append(True)
        return False

    s = SideServer("127.0.0.1", 0, ready, token="tok").start()
    try:
        assert _call(s, "/healthz") == (503, '{"status": "loading"}') and asked == [True]
        assert _call(s, "/livez") == (200, '{"status": "alive"}') and asked == [True]
        assert _call(s, "/metrics")[0] == 401
    finally:
        s.stop()
