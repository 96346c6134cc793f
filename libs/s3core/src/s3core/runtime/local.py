"""The embedded default: redis-server and the services as processes on loopback.

``LocalStack`` keeps one JSON record per process under ``<state_dir>/run/`` (pid, ports, command),
logs under ``<state_dir>/logs/``.  ``s3 up`` / ``s3 down`` / ``s3 status`` are thin wrappers; ``s3 eval``
uses an ephemeral stack in a temporary state dir when no service addresses are given.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from s3core.config import GeneratorConfig, SearcherConfig
from s3core.errors import NotFound, S3Error, Unavailable
from s3core.io import write_json
from s3core.runtime.redis_server import find_redis_server, redis_command


@dataclass
class ProcInfo:
    name: str
    pid: int
    grpc_port: int = 0
    http_port: int = 0
    log: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _tail(path: str, n: int = 15) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def require_searcher_installed() -> None:
    if importlib.util.find_spec("s3_searcher") is None:
        raise NotFound("the searcher service (python package s3_searcher) is not installed; "
                       "install services/searcher or give --searcher ADDR")


def _cfg_args(config_path: str) -> list[str]:
    return ["--config", config_path] if config_path else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_pid(port: int) -> int:
    """``process_id`` of the redis-server answering on ``port`` (0 when it is not ready yet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"INFO server\r\n")
        data = b""
        while b"\r\n\r\n" not in data[-8:] and len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"-"):  # e.g. -LOADING: not ready yet
                return 0
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return 0


class LocalStack:
    def __init__(self, state_dir: str | os.PathLike[str], detach: bool = True) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.detach = detach  # own session: survives the CLI that started it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # -- records --------------------------------------------------------------------------------
    def _record(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def get(self, name: str) -> ProcInfo | None:
        path = self._record(name)
        if not path.is_file():
            return None
        try:
            info = ProcInfo(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None
        return info if _alive(info.pid) else None

    def status(self) -> list[ProcInfo]:
        out = []
        for rec in sorted(self.run_dir.glob("*.json")):
            info = self.get(rec.stem)
            if info is None:
                rec.unlink(missing_ok=True)  # stale record of a dead process
            else:
                out.append(info)
        return out

    # -- processes ------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        fh = open(log, "ab")  # noqa: SIM115 - handed to the child
        return subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=self.detach,
        )

    def start_redis(self, port: int = 0) -> ProcInfo:
        existing = self.get("redis")
        if existing is not None:
            return existing
        port = port or free_port()
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        proc = self._spawn("redis", redis_command(find_redis_server(), port, data))
        info = ProcInfo("redis", proc.pid, grpc_port=port, log=str(self.log_dir / "redis.log"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable(f"redis-server exited with {proc.returncode}:\n{_tail(info.log)}")
            try:
                # the answer must come from the server just spawned, not another one holding the port
                if _redis_pid(port) == proc.pid:
                    write_json(self._record("redis"), info.__dict__)
                    return info
                time.sleep(0.1)
            except OSError:
                time.sleep(0.1)
        proc.kill()
        raise Unavailable(f"redis-server did not answer on port {port} within 20 s:\n{_tail(info.log)}")

    def start_service(self, name: str, module: str, args: list[str], timeout: float = 600.0,
                      env: dict[str, str] | None = None) -> ProcInfo:
        """Start ``python -m module args --port 0 --http-port 0 --ready-file ...`` and wait for it."""
        existing = self.get(name)
        if existing is not None:
            return existing
        ready = self.run_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", module, *args, "--port", "0", "--http-port", "0", "--ready-file", str(ready)]
        proc = self._spawn(name, cmd, env)
        log = str(self.log_dir / f"{name}.log")
        # recorded at once, so `down()` stops a service that is still loading too
        write_json(self._record(name), ProcInfo(name, proc.pid, log=log).__dict__)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._record(name).unlink(missing_ok=True)
                raise S3Error(f"{name} exited with code {proc.returncode} during start-up; last log lines:\n{_tail(log)}")
            if ready.is_file():
                try:
                    r = json.loads(ready.read_text())
                except ValueError:
                    time.sleep(0.05)
                    continue
                info = ProcInfo(name, proc.pid, int(r["grpc_port"]), int(r["http_port"]), log)
                write_json(self._record(name), info.__dict__)
                return info
            time.sleep(0.1)
        proc.kill()
        self._record(name).unlink(missing_ok=True)
        raise Unavailable(f"{name} not ready after {timeout:.0f}s; last log lines:\n{_tail(log)}")

    # -- the platform's services ----------------------------------------------------------------
    def start_retriever(self, index: str, config_path: str = "") -> ProcInfo:
        return self.start_service("retriever", "s3_retriever", [*_cfg_args(config_path), "--index", index])

    def start_generator(self, cfg: GeneratorConfig, config_path: str = "") -> ProcInfo:
        args = [*_cfg_args(config_path), "--backend", cfg.backend, "--model", cfg.model]
        if cfg.base_url:
            args += ["--base-url", cfg.base_url]
        return self.start_service("generator", "s3_generator", args)

    def start_searcher(self, cfg: SearcherConfig, retriever: str, config_path: str = "", model: str = "") -> ProcInfo:
        require_searcher_installed()
        args = [*_cfg_args(config_path), "--retriever", retriever, "--backend", cfg.backend, "--model", model or cfg.model]
        if cfg.base_url:
            args += ["--base-url", cfg.base_url]
        return self.start_service("searcher", "s3_searcher", args)

    def start_controller(self, redis_url: str, config_path: str = "", backend: str = "local",
                         extra_args: list[str] | None = None) -> ProcInfo:
        """The job controller over ``redis_url``; its workers' logs go under this state dir.  Workers it
        starts run in sessions of their own: stopping the controller leaves them running."""
        args = [*_cfg_args(config_path), "--redis-url", redis_url, "--backend", backend,
                "--state-dir", str(self.state_dir), *(extra_args or [])]
        return self.start_service("controller", "s3_controller", args, timeout=60.0)

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        info = self.get(name)
        self._record(name).unlink(missing_ok=True)
        (self.run_dir / f"{name}.ready").unlink(missing_ok=True)
        if info is None:
            return False
        try:
            os.kill(info.pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(info.pid):
            time.sleep(0.05)
        if _alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        return True

    def down(self) -> list[str]:
        stopped = []
        names = [p.stem for p in self.run_dir.glob("*.json")]
        # services first, redis last
        for name in sorted(names, key=lambda n: n == "redis"):
            if self.stop(name):
                stopped.append(name)
        return stopped
