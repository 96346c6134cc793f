"""`s3 up` / `s3 down` / `s3 status` do what was asked (issue 17 items 6 and 10): a running service is
reused only when it was started with the same arguments (a different --index is refused, naming both),
a second start during start-up returns the real ports (not 127.0.0.1:0), and `s3 down --state-dir TYPO`
says so instead of creating the folder.  Real processes: redis-server and retrievers over tiny indexes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from s3cli.main import main
from s3core.errors import InvalidArgument
from s3core.runtime.local import LocalStack


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    root = tmp_path_factory.mktemp("up-args")
    synthesize(root / "data", seed=6, n_entities=30, n_questions=2)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "a", show_progress=False)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "b", show_progress=False)
    return root / "a", root / "b"


def test_up_refuses_a_running_retriever_with_another_index(indexes: tuple[Path, Path], tmp_path: Path,
                                                           capsys: Any, monkeypatch: Any) -> None:
    a, b = indexes
    state = tmp_path / "state"
    try:
        assert main(["up", "--index", str(a), "--no-generator", "--state-dir", str(state)]) == 0
        first = LocalStack(state).get("retriever")
        assert first is not None and first.grpc_port
        monkeypatch.chdir(a.parent)  # the same index by a relative path: the same service
        assert main(["up", "--index", a.name, "--no-generator", "--state-dir", str(state)]) == 0
        again = LocalStack(state).get("retriever")
        assert again is not None and again.pid == first.pid
        capsys.readouterr()
        assert main(["up", "--index", str(b), "--no-generator", "--state-dir", str(state)]) == 2
        err = capsys.readouterr().err
        assert "already running" in err and str(a) in err and str(b) in err and "s3 down" in err, err
        still = LocalStack(state).get("retriever")
        assert still is not None and still.pid == first.pid  # left as it was
    finally:
        main(["down", "--state-dir", str(state)])
    assert LocalStack(state).status() == []


def test_a_second_start_during_start_up_gets_the_real_ports(indexes: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = indexes
    stack = LocalStack(tmp_path / "state", detach=False)
    got: dict[str, Any] = {}

    def second() -> None:  # another `s3 up` while the first is still loading the index
        while stack.get("retriever") is None:
            pass
        got["loading"] = stack.get("retriever")
        got["second"] = stack.start_retriever(str(a))

    t = threading.Thread(target=second)  # it only waits: the service is started (and owned) by this thread
    t.start()
    try:
        first = stack.start_retriever(str(a))
        t.join(60)
        assert got["loading"].grpc_port == 0  # it did come while the service was loading ...
        assert got["second"].pid == first.pid and got["second"].grpc_port == first.grpc_port != 0  # ... yet got its ports
        assert got["second"].address != "127.0.0.1:0"
        r = stack.start_redis()
        assert stack.start_redis().pid == stack.start_redis(r.grpc_port).pid == r.pid
        with pytest.raises(InvalidArgument, match="already running on port"):
            stack.start_redis(r.grpc_port + 1)
    finally:
        t.join(60)
        stack.down()


def test_down_and_status_with_a_mistyped_state_dir(tmp_path: Path, capsys: Any) -> None:
    typo = tmp_path / ".s3-typo"
    for cmd in ("down", "status"):
        assert main([cmd, "--state-dir", str(typo)]) == 2
        err = capsys.readouterr().err
        assert "no s3 state there" in err and str(typo) in err
    assert not typo.exists()  # not created
