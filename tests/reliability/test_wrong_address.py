"""A wrong or stale address fails within seconds, saying what is there (issue 17 item 5): a dead port,
another service's port, a service's HTTP port.  Used to wait 300 s in silence.

Real components: a retriever service over a tiny BM25 index on loopback (its gRPC and HTTP ports).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3core.errors import Unavailable
from s3core.rpc.clients import GeneratorClient, RetrieverClient
from s3core.runtime.local import LocalStack, ProcInfo, free_port


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcInfo, Path]]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    root = tmp_path_factory.mktemp("wrong-address")
    synthesize(root / "data", seed=2, n_entities=30, n_questions=2)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    stack = LocalStack(root / "state", detach=False)
    info = stack.start_retriever(str(root / "idx"))
    try:
        yield info, root
    finally:
        stack.down()


def _fails_fast(client: Any, within: float, *needles: str, **kw: Any) -> str:
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as exc:
        client.wait_ready(timeout=120, **kw)
    took = time.monotonic() - t0
    client.close()
    msg = str(exc.value)
    assert took < within, f"took {took:.1f} s: {msg}"
    for n in needles:
        assert n in msg, msg
    return msg


def test_another_services_port(retriever: tuple[ProcInfo, Path]) -> None:
    info, _ = retriever
    RetrieverClient(info.address).wait_ready(timeout=10)  # the right address still works
    _fails_fast(GeneratorClient(info.address), 5, "is not a s3.v1.Generator server", "s3.v1.Retriever")


def test_a_services_http_port(retriever: tuple[ProcInfo, Path]) -> None:
    info, _ = retriever
    _fails_fast(GeneratorClient(f"127.0.0.1:{info.http_port}"), 5, "does not speak gRPC", "HTTP")


def test_a_dead_port_and_what_is_waited_for(caplog: pytest.LogCaptureFixture, monkeypatch: Any) -> None:
    import s3core.rpc.clients as clients

    monkeypatch.setattr(clients, "WAIT_NOTE_S", 0.5)
    port = free_port()
    with caplog.at_level("WARNING", logger="s3core.rpc.clients"):
        _fails_fast(RetrieverClient(f"127.0.0.1:{port}"), 6, "connection refused", "nothing listens",
                    refused_grace=2)
    assert f"waiting for s3.v1.Retriever at 127.0.0.1:{port} to be SERVING (connection refused" in caplog.text


def test_eval_with_a_swapped_address_exits_at_once(retriever: tuple[ProcInfo, Path], capsys: Any) -> None:
    from s3cli.main import main

    info, root = retriever
    t0 = time.monotonic()
    rc = main(["eval", "--questions", str(root / "data" / "synth_1hop.jsonl"), "--method", "naive-rag",
               "--retriever", info.address, "--generator", info.address, "--out", str(root / "ev"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a s3.v1.Generator server" in err and time.monotonic() - t0 < 10, err
