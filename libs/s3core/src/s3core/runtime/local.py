"""The embedded default: redis-server and the services as processes on loopback.

``LocalStack`` keeps one JSON record per process under ``<state_dir>/run/`` (pid, ports, command),
logs under ``<state_dir>/logs/``.  ``s3 up`` / ``s3 down`` / ``s3 status`` are thin wrappers; ``s3 eval``
uses an ephemeral stack in a temporary state dir when no service addresses are given.

Services of an ephemeral stack (``detach=False``) die with the process that started them, however it
ends (SIGKILL, the OOM killer, a CI timeout): each child asks the kernel for a parent-death signal
(``prctl(PR_SET_PDEATHSIG)``) and exits at once if its parent is already gone.  The temporary state dir
of a run (:func:`run_state_dir`) records its owner; a later run sweeps the dirs whose owner is dead,
stopping any service still running from one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from s3core.config import GeneratorConfig, SearcherConfig
from s3core.errors import InvalidArgument, NotFound, S3Error, Unavailable
from s3core.io import write_json
from s3core.runtime.redis_server import embedded_password, find_redis_server, redis_command

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
OWNER_FILE = "owner.json"
RUN_PREFIXES = ("s3-run-", "s3-infer-")


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # loaded in the parent: the child only calls it between fork and exec


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when its parent dies, and
    exits at once if the parent died before the request took effect.  Elsewhere than Linux: a no-op.

    Linux sends the signal when the *thread* that forked the child exits, so start such services from
    a thread that outlives them (the main thread, as ``s3 eval`` / ``s3 train`` do)."""
    parent = os.getpid()

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent is already gone: nothing would deliver the signal
            os._exit(1)

    return preexec


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (tells a live process from a later one with a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _owner_alive(owner: dict[str, object]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = owner.get("start") or ""
    return not started or not os.path.exists(f"/proc/{pid}") or _start_time(pid) == started


def sweep_stale_runs(tmp_root: str | os.PathLike[str] | None = None,
                     prefixes: tuple[str, ...] = RUN_PREFIXES) -> list[Path]:
    """Remove the temporary state dirs of runs whose owner process is dead (killed before it could
    clean up).  A service still running from one is stopped first, but only if it is the process its
    record names (same kernel start time, or a command line naming that dir): a reused pid is never
    signalled.  Dirs without an owner record are left alone.
    Returns the dirs removed."""
    root = Path(tmp_root or tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(prefixes) and p.is_dir()]
    except OSError:
        return removed
    for d in candidates:
        try:
            owner = json.loads((d / OWNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if not isinstance(owner, dict) or _owner_alive(owner):
            continue
        for rec in (d / "run").glob("*.json"):
            try:
                r = json.loads(rec.read_text(encoding="utf-8"))
                pid, started = int(r["pid"]), str(r.get("started") or "")
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if (started and _start_time(pid) == started) or str(d) in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    logger.warning("stopped %s (pid %d), orphaned by a run that died", rec.stem, pid)
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
            logger.info("swept stale run state %s (owner pid %s is gone)", d, owner.get("pid"))
    return removed


@contextlib.contextmanager
def run_state_dir(prefix: str = "s3-run-") -> Iterator[Path]:
    """A temporary state dir for the services of one run: stale ones of dead runs are swept first,
    this one records its owner (pid + start time) and is removed when the block ends."""
    sweep_stale_runs()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        write_json(Path(tmp) / OWNER_FILE, {"pid": os.getpid(), "start": _start_time(os.getpid())})
        yield Path(tmp)


@dataclass
class ProcInfo:
    name: str
    pid: int
    grpc_port: int = 0
    http_port: int = 0
    log: str = ""
    started: str = ""  # the kernel's start time of pid: a record never names a later process with that pid
    args: list[str] | None = None  # what it was started with (compared when asked to start it again)

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


def _abs(path: str) -> str:
    """An absolute path for a path that exists (so the same index asked from two folders compares
    equal); anything else (``lucene:NAME``, a comma list) as given."""
    return str(Path(path).resolve()) if path and os.path.exists(path) else path


def _cfg_args(config_path: str) -> list[str]:
    return ["--config", _abs(config_path)] if config_path else []


def _show_args(args: list[str]) -> str:
    return " ".join(args) if args else "no arguments"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_pid(port: int, password: str = "") -> int:
    """``process_id`` of the redis-server answering on ``port`` (0 when it is not ready yet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        if password:
            s.sendall(f"AUTH {password}\r\n".encode())
            if not s.recv(64).startswith(b"+OK"):
                return 0
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
        self.detach = detach  # own session, survives the CLI; else dies with the process that started it
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
        if info.started and os.path.exists("/proc/self/stat") and _start_time(info.pid) != info.started:
            return None  # that process is gone and its pid now belongs to another one
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
            # SIGTERM: the service stops cleanly (redis-server too); it is the parent's death, not a stop
            preexec_fn=None if self.detach else die_with_parent(signal.SIGTERM),
        )

    def start_redis(self, port: int = 0) -> ProcInfo:
        existing = self.get("redis")
        if existing is not None:
            if port and existing.grpc_port != port:
                raise InvalidArgument(f"redis is already running on port {existing.grpc_port} (pid {existing.pid}, "
                                      f"state dir {self.state_dir}), not on port {port} as asked; `s3 down"
                                      f"{self._state_flag()}` first, or ask for port {existing.grpc_port}")
            return existing
        port = port or free_port()
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        password = embedded_password()  # with an auth token: requirepass (in a 0600 config file)
        proc = self._spawn("redis", redis_command(find_redis_server(), port, data, password=password))
        info = ProcInfo("redis", proc.pid, grpc_port=port, log=str(self.log_dir / "redis.log"),
                        started=_start_time(proc.pid))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable(f"redis-server exited with {proc.returncode}:\n{_tail(info.log)}")
            try:
                # the answer must come from the server just spawned, not another one holding the port
                if _redis_pid(port, password) == proc.pid:
                    write_json(self._record("redis"), info.__dict__)
                    return info
                time.sleep(0.1)
            except OSError:
                time.sleep(0.1)
        proc.kill()
        raise Unavailable(f"redis-server did not answer on port {port} within 20 s:\n{_tail(info.log)}")

    def start_service(self, name: str, module: str, args: list[str], timeout: float = 600.0,
                      env: dict[str, str] | None = None) -> ProcInfo:
        """Start ``python -m module args --port 0 --http-port 0 --ready-file ...`` and wait for it.

        One already running under this state dir is reused only if it was started with the same
        ``args`` (else :class:`InvalidArgument` says what runs and what was asked); one still starting
        is waited for, so its real ports are returned."""
        existing = self.get(name)
        if existing is not None:
            if existing.args is not None and existing.args != list(args):
                raise InvalidArgument(
                    f"a {name} is already running (pid {existing.pid}, state dir {self.state_dir}) with "
                    f"{_show_args(existing.args)}, not {_show_args(args)} as asked: it would keep serving what it "
                    f"was started with. Stop it first (`s3 down{self._state_flag()}`), or use another --state-dir")
            if existing.grpc_port:
                return existing
            return self._wait_started(name, existing, timeout)
        ready = self.run_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", module, *args, "--port", "0", "--http-port", "0", "--ready-file", str(ready)]
        proc = self._spawn(name, cmd, env)
        log = str(self.log_dir / f"{name}.log")
        # recorded at once, so `down()` stops a service that is still loading too
        started = _start_time(proc.pid)
        write_json(self._record(name), ProcInfo(name, proc.pid, log=log, started=started, args=list(args)).__dict__)
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
                info = ProcInfo(name, proc.pid, int(r["grpc_port"]), int(r["http_port"]), log, started, list(args))
                write_json(self._record(name), info.__dict__)
                return info
            time.sleep(0.1)
        proc.kill()
        self._record(name).unlink(missing_ok=True)
        raise Unavailable(f"{name} not ready after {timeout:.0f}s; last log lines:\n{_tail(log)}")

    def _state_flag(self) -> str:
        default = Path(os.environ.get("S3_HOME", ".s3")).resolve()
        return "" if self.state_dir == default else f" --state-dir {self.state_dir}"

    def _wait_started(self, name: str, info: ProcInfo, timeout: float) -> ProcInfo:
        """Wait for a service another `s3 up` is starting to record its ports."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cur = self.get(name)
            if cur is None:
                raise S3Error(f"{name} (pid {info.pid}), started by another command, exited during start-up; last "
                              f"log lines:\n{_tail(info.log)}")
            if cur.grpc_port:
                return cur
            time.sleep(0.1)
        raise Unavailable(f"{name} (pid {info.pid}), started by another command, not ready after {timeout:.0f}s")

    # -- the platform's services ----------------------------------------------------------------
    def start_retriever(self, index: str, config_path: str = "") -> ProcInfo:
        return self.start_service("retriever", "s3_retriever", [*_cfg_args(config_path), "--index", _abs(index)])

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
