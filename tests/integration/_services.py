"""Start a service process on loopback and wait for its ready file: the one launcher of the integration tests.

``start_service`` runs ``python -m MODULE ARGS --host 127.0.0.1 --port 0 --http-port 0 --ready-file F``
with its output in a log file, waits for ``F`` (``{grpc_port, http_port, pid}``, written once health is
SERVING), and fails the test with the log when the process exits or the wait times out.  ``run_service``
is the same as a context manager that stops the process after.  Test modules import it by name (pytest
puts this folder on ``sys.path``); ``conftest.py`` offers it as the ``service_runner`` fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Service:
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    log: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def start_service(module: str, args: list[str], workdir: Path, timeout: float = 120.0, *,
                  env: Mapping[str, str] | None = None, ready: Path | None = None, log: Path | None = None) -> Service:
    """Start ``module`` and wait for its ready file (default ``workdir/ready.json``, log ``workdir/service.log``).
    ``env``: the environment (default: this one), always with ``S3_LOG_LEVEL=INFO`` (tests read the log)."""
    ready = ready or workdir / "ready.json"
    log = log or workdir / "service.log"
    cmd = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
           "--ready-file", str(ready)]
    run_env = {**(os.environ if env is None else env), "S3_LOG_LEVEL": "INFO"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=run_env)
    deadline = time.monotonic() + timeout
    info = None
    while info is None:
        if proc.poll() is not None:
            pytest.fail(f"{module} exited with code {proc.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{module} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')}")
        if ready.exists():
            with contextlib.suppress(json.JSONDecodeError):
                info = json.loads(ready.read_text())
        time.sleep(0.05)
    return Service(proc=proc, grpc_port=int(info["grpc_port"]), http_port=int(info["http_port"]), log=log)


def stop_service(svc: Service, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if svc.proc.poll() is not None:
        return
    svc.proc.terminate()
    try:
        svc.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        svc.proc.kill()
        svc.proc.wait()


@contextlib.contextmanager
def run_service(module: str, args: list[str], workdir: Path, timeout: float = 120.0,
                env: Mapping[str, str] | None = None) -> Iterator[Service]:
    """:func:`start_service`, stopped after the ``with`` block."""
    svc = start_service(module, args, workdir, timeout, env=env)
    try:
        yield svc
    finally:
        stop_service(svc)
