"""The embedded default's runtime: a real redis-server and the `s3 up/status/down` lifecycle."""

import os
import subprocess
import sys

import redis

from s3core.runtime.local import LocalStack
from s3core.runtime.redis_server import find_redis_server


def test_redis_binary_is_real():
    binary = find_redis_server()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    assert "Redis server" in out or "Valkey" in out


def test_redis_keeps_data_across_restart_with_aof(tmp_path):
    stack = LocalStack(tmp_path, detach=False)
    info = stack.start_redis()
    r = redis.Redis(host="127.0.0.1", port=info.grpc_port)
    assert r.ping()
    r.set("s3:test:key", "kept")
    r.execute_command("BGREWRITEAOF")
    r.close()
    stack.stop("redis")
    assert stack.get("redis") is None
    info2 = stack.start_redis(info.grpc_port)
    r2 = redis.Redis(host="127.0.0.1", port=info2.grpc_port)
    assert r2.get("s3:test:key") == b"kept"
    r2.close()
    assert stack.down() == ["redis"]


def test_cli_up_status_down(tmp_path):
    env = {**os.environ, "S3_LOG_LEVEL": "WARNING"}
    state = str(tmp_path / "state")

    def s3(*args):
        return subprocess.run([sys.executable, "-m", "s3cli", *args], capture_output=True, text=True, env=env, timeout=120)

    up = s3("up", "--no-generator", "--state-dir", state)
    assert up.returncode == 0, up.stderr
    try:
        st = s3("status", "--state-dir", state)
        assert "redis" in st.stdout
        procs = LocalStack(state).status()
        assert [p.name for p in procs] == ["redis"]
        port = procs[0].grpc_port
        assert redis.Redis(host="127.0.0.1", port=port).ping()
    finally:
        down = s3("down", "--state-dir", state)
    assert down.returncode == 0 and "redis" in down.stdout
    assert LocalStack(state).status() == []
    assert "nothing was running" in s3("down", "--state-dir", state).stdout
