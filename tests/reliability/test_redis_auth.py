"""With an auth token the embedded Redis has a password (issue 17 item 7): a local user without it can
neither read nor write job state and baselines, the platform's own clients (baseline cache, job store)
get in, the password is on no command line and in no log, and without a token nothing changes.
A real redis-server started the way `s3 up` starts it."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
import redis

from s3core.cache.baseline import BaselineCache, redis_url
from s3core.jobs.store import JobStore
from s3core.runtime.local import LocalStack
from s3core.runtime.redis_server import embedded_password


def test_token_gives_the_embedded_redis_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_AUTH_TOKEN", "team-token-123")
    stack = LocalStack(tmp_path / "state", detach=False)
    info = stack.start_redis()
    try:
        url = redis_url("", info.grpc_port)
        stranger = redis.Redis.from_url(url, socket_connect_timeout=2)
        with pytest.raises(redis.exceptions.AuthenticationError):
            stranger.get("s3:job:anything")
        with pytest.raises(redis.exceptions.AuthenticationError):
            stranger.set("s3:job:evil", "x")
        assert BaselineCache.from_url(url).count() == 0  # the platform's clients are let in
        store = JobStore.from_url(url)
        assert store.r.ping()
        pw = embedded_password()
        assert pw and pw != "team-token-123"
        cmdline = " ".join(psutil.Process(info.pid).cmdline())
        assert pw not in cmdline and "team-token-123" not in cmdline
        conf = tmp_path / "state" / "redis" / "auth.conf"
        assert conf.stat().st_mode & 0o077 == 0  # only its owner reads the password file
        assert pw not in Path(info.log).read_text(errors="replace")
    finally:
        stack.down()


def test_without_a_token_nothing_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("S3_AUTH_TOKEN_FILE", raising=False)
    stack = LocalStack(tmp_path / "state", detach=False)
    info = stack.start_redis()
    try:
        url = redis_url("", info.grpc_port)
        assert redis.Redis.from_url(url).ping()
        # a token set later: the clients still reach a local Redis that has no password
        monkeypatch.setenv("S3_AUTH_TOKEN", "late")
        assert BaselineCache.from_url(url).count() == 0
        assert JobStore.from_url(url).r.ping()
        assert not (tmp_path / "state" / "redis" / "auth.conf").exists()
    finally:
        stack.down()
    assert os.environ["S3_AUTH_TOKEN"] == "late"
