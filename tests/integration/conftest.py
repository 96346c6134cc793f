"""Fixtures for the retriever-service integration tests: real indexes, a real server subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

BM25_DOCS = 3000
DENSE_DOCS = 300


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


@contextlib.contextmanager
def run_service(module: str, args: list[str], workdir: Path, timeout: float = 120.0) -> Iterator[Service]:
    """Start ``python -m module ... --port 0 --http-port 0 --ready-file F``; wait for F; stop it after."""
    ready = workdir / "ready.json"
    log = workdir / "service.log"
    cmd = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
           "--ready-file", str(ready)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "S3_LOG_LEVEL": "INFO"})
    try:
        deadline = time.monotonic() + timeout
        info = None
        while info is None:
            if proc.poll() is not None:
                pytest.fail(f"{module} exited with code {proc.returncode}:\n{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"{module} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')}")
            if ready.exists():
                with contextlib.suppress(json.JSONDecodeError):
                    info = json.loads(ready.read_text())
            time.sleep(0.05)
        yield Service(proc=proc, grpc_port=int(info["grpc_port"]), http_port=int(info["http_port"]), log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _head(src: Path, dst: Path, n: int) -> Path:
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.writelines(islice(fin, n))
    return dst


@pytest.fixture(scope="session")
def service_runner():  # noqa: ANN201 - the run_service context manager
    """``with service_runner("s3_retriever", [...args], workdir) as svc:`` -- a started service."""
    return run_service


@pytest.fixture(scope="session")
def retriever_indexes(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A BM25 index of the first 3000 wiki passages and a dense one (embedded MiniLM) of the first 300."""
    from s3core.retrieval import build_index

    root = tmp_path_factory.mktemp("retriever-indexes")
    corpus = shared_data / "wiki_corpus.jsonl"
    bm25_corpus = _head(corpus, root / "wiki3000.jsonl", BM25_DOCS)
    dense_corpus = _head(corpus, root / "wiki300.jsonl", DENSE_DOCS)
    build_index(bm25_corpus, "bm25", root / "wiki-bm25", show_progress=False)
    # short passages keep the CPU embedding of 300 docs to a few seconds
    build_index(dense_corpus, "dense", root / "wiki-dense", show_progress=False,
                params={"max_seq_length": 64, "batch_size": 32})
    return {"bm25": root / "wiki-bm25", "dense": root / "wiki-dense", "bm25_docs": BM25_DOCS,
            "dense_docs": DENSE_DOCS}
