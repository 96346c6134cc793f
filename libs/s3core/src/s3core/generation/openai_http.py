"""JSON over HTTP to an OpenAI-compatible endpoint (vLLM serve, a hosted API), standard library only.

Shared by the generator's ``openai`` backend and the searcher's ``openai`` policy.

:class:`JSONClient` keeps persistent HTTP/1.1 connections (a pool of idle keep-alive connections, one
in use per concurrent request), so a batch of requests does not pay a TCP handshake each; a
connection the server closed while idle is replaced and the request re-sent at once.  Failures that
may pass (connection refused / reset, timeouts, 408, 429, 5xx) are retried with exponential backoff
and jitter (``Retry-After`` honoured, capped); then they raise :class:`~s3core.errors.Unavailable`.
Other 4xx answers raise :class:`~s3core.errors.InvalidArgument` with the endpoint's message, never
retried.  ``timeout`` bounds the connect and every socket read.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
from typing import Any

from s3core.errors import ConfigError, InvalidArgument, Unavailable

__all__ = ["JSONClient", "request_json"]

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JSONClient:
    """A thread-safe JSON client of one base URL with keep-alive connections and retries."""

    def __init__(self, base_url: str, *, api_key: str | None = "", timeout: float = 120.0, retries: int = 3,
                 backoff: float = 0.25, max_backoff: float = 8.0, max_idle: int = 64,
                 what: str = "endpoint") -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"{what} URL must look like http://HOST:PORT/PATH, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port or (443 if self._https else 80)
        self._prefix = u.path.rstrip("/")
        self.api_key = api_key or ""
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_idle = int(max_idle)
        self.what = what
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.connections_opened = 0  # for tests and metrics: how many TCP connections were made
        self.retried = 0  # requests re-sent after a retryable failure

    # --- connections -------------------------------------------------------------------------
    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
            self.connections_opened += 1
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # --- requests ----------------------------------------------------------------------------
    def _once(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Any:
        url = f"{self.base_url}{path}"
        for fresh_try in (False, True):
            conn, reused = self._take()
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and not fresh_try and not isinstance(exc, TimeoutError):
                    continue  # the server closed the idle connection: once more on a new one, now
                raise _Retryable(f"{self.what} {url} cannot be reached: {type(exc).__name__}: {exc}") from None
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            break
        status = resp.status
        if status >= 400:
            detail = raw.decode("utf-8", "replace")[:500]
            if status in _RETRY_STATUS:
                after = resp.getheader("Retry-After")
                try:
                    wait = float(after) if after else None
                except ValueError:
                    wait = None
                raise _Retryable(f"{self.what} {url} failed ({status}): {detail}", wait)
            raise InvalidArgument(f"{self.what} {url} refused the request ({status}): {detail}")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise Unavailable(f"{self.what} {url} answered with something that is not JSON") from None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """``method path`` with a JSON body; the decoded JSON answer (see the module doc for errors)."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, path, data, headers)
            except _Retryable as exc:
                if attempt == self.retries:
                    raise Unavailable(str(exc) + (f" (after {attempt} retries)" if attempt else "")) from None
                delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                with self._lock:
                    self.retried += 1
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def request_json(base_url: str, method: str, path: str, body: dict[str, Any] | None = None, *,
                 api_key: str = "", timeout: float = 120.0, what: str = "endpoint", retries: int = 0) -> Any:
    """One request on a throw-away connection (no pooling); :class:`JSONClient` for repeated calls."""
    client = JSONClient(base_url, api_key=api_key, timeout=timeout, retries=retries, what=what)
    try:
        return client.request(method, path, body)
    finally:
        client.close()
