"""A small threaded HTTP side-server per service: ``/metrics``, ``/healthz`` and extra routes.

Services add routes (the retriever's Search-R1-compatible ``POST /retrieve``).  Handlers receive the
parsed JSON body and return ``(status, json_obj)``; a :class:`~s3core.errors.S3Error` becomes a 4xx
JSON error with its message.

With a token configured (``$S3_AUTH_TOKEN`` / ``$S3_AUTH_TOKEN_FILE``, as for gRPC) every route asks
for ``Authorization: Bearer <token>`` (401 without it); ``/healthz`` (readiness: 503 until the service is ready
or while a dependency is missing) and ``/livez`` (liveness: 200 whenever the process answers, whatever its
dependencies) stay open for probes, and ``/metrics`` stays open unless ``$S3_AUTH_METRICS`` is true (Prometheus
then sends the token).
A connection that sends nothing for ``READ_TIMEOUT_S`` (a half-sent request, an idle keep-alive) is
closed, so slow or stuck clients cannot hold the server's threads; the listen backlog is 128.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from s3core.errors import InvalidArgument, NotFound, S3Error

logger = logging.getLogger(__name__)

JsonHandler = Callable[[Any], tuple[int, Any]]
MAX_BODY_BYTES = 16 * 1024 * 1024
READ_TIMEOUT_S = 30.0
METRICS_AUTH_ENV = "S3_AUTH_METRICS"
OPEN_PATHS = ("/healthz", "/livez")  # probes: kubelet sends no token


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default listen backlog is 5


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


class SideServer:
    def __init__(self, host: str, port: int, ready: Callable[[], bool] | None = None, *,
                 token: str | None = None, protect_metrics: bool | None = None,
                 read_timeout: float = READ_TIMEOUT_S) -> None:
        """``token`` ``None`` = the one the environment configures ("" = none), as for gRPC."""
        from s3core.rpc.auth import load_token

        self.routes: dict[tuple[str, str], JsonHandler] = {}
        self._ready = ready or (lambda: True)
        self._token = (load_token() if token is None else token.strip()).encode()
        self._protect_metrics = (_truthy(os.environ.get(METRICS_AUTH_ENV)) if protect_metrics is None
                                 else protect_metrics)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = read_timeout  # socket timeout: a request that stalls mid-way is dropped

            def _authorized(self, path: str) -> bool:
                """True when no token is needed or the right one came; else answers 401."""
                if not outer._token or path in OPEN_PATHS or (path == "/metrics" and not outer._protect_metrics):
                    return True
                scheme, _, got = (self.headers.get("Authorization") or "").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(got.strip().encode(), outer._token):
                    return True
                self.close_connection = True
                self.send_response(401)
                self.send_header("WWW-Authenticate", "Bearer")
                body = json.dumps({"error": "missing or invalid token (expected 'Authorization: Bearer <token>')"})
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())
                return False

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet access log
                logger.debug("http %s", fmt % args)

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"))

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if not self._authorized(path):
                    return
                if path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif path == "/livez":  # the process answers: nothing asked of the model, Redis or any service
                    self._json(200, {"status": "alive"})
                elif path == "/healthz":
                    ok = outer._ready()
                    self._json(200 if ok else 503, {"status": "ok" if ok else "loading"})
                elif ("GET", path) in outer.routes:
                    self._dispatch("GET", path, None)
                else:
                    self._json(404, {"error": f"no route GET {path}"})

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if not self._authorized(path):
                    return
                if ("POST", path) not in outer.routes:
                    self._json(404, {"error": f"no route POST {path}"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    self._json(400, {"error": "bad Content-Length"})
                    return
                if length < 0 or length > MAX_BODY_BYTES:
                    self._json(413, {"error": f"body must be at most {MAX_BODY_BYTES} bytes"})
                    return
                try:
                    raw = self.rfile.read(length)
                except TimeoutError:  # a half-sent body: drop the connection, free the thread
                    self.close_connection = True
                    return
                try:
                    body = json.loads(raw.decode("utf-8")) if raw else None
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # too deep: RecursionError
                    self._json(400, {"error": f"request body is not valid JSON: {type(exc).__name__}: {exc}"})
                    return
                self._dispatch("POST", path, body)

            def _dispatch(self, method: str, path: str, body: Any) -> None:
                try:
                    status, obj = outer.routes[(method, path)](body)
                except InvalidArgument as exc:
                    status, obj = 400, {"error": str(exc)}
                except NotFound as exc:
                    status, obj = 404, {"error": str(exc)}
                except S3Error as exc:
                    status, obj = 503, {"error": str(exc)}
                except Exception as exc:  # noqa: BLE001
                    logger.exception("http %s %s failed", method, path)
                    status, obj = 500, {"error": f"internal error: {type(exc).__name__}"}
                self._json(status, obj)

        self.httpd = _Server((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="s3-http", daemon=True)

    def route(self, method: str, path: str, handler: JsonHandler) -> None:
        self.routes[(method.upper(), path)] = handler

    def start(self) -> "SideServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
