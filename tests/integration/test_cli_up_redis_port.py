"""`s3 up` twice on one machine: the second stack's Redis takes a free port instead of failing on redis.port, and the
commands that use the local Redis (`s3 cache ...`) reach their own stack's Redis through its record ($S3_HOME)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path


def _s3(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s3cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "S3_HOME": str(home), "COLUMNS": "200"}, cwd=home.parent)


def test_a_second_stack_gets_its_own_redis_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"redis: {{port: {port}}}\n")
    homes = [tmp_path / "one", tmp_path / "two"]
    try:
        first = _s3(["up", "--no-generator", "--config", str(cfg), "--state-dir", str(homes[0])], homes[0])
        assert first.returncode == 0, first.stdout + first.stderr
        assert "is taken" not in first.stdout  # the configured port, free: used
        second = _s3(["up", "--no-generator", "--config", str(cfg), "--state-dir", str(homes[1])], homes[1])
        assert second.returncode == 0, second.stdout + second.stderr
        m = re.search(rf"port {port} is taken, using (\d+)", second.stdout)
        assert m, second.stdout
        other = int(m.group(1))
        assert other != port
        # one baseline entry in the second stack's Redis only
        import redis

        from s3core.cache.baseline import KEY_VERSION

        redis.Redis(port=other).set(f"s3:baseline:{KEY_VERSION}:probe", "{}")
        for home, want, n in zip(homes, (port, other), (0, 1)):
            status = _s3(["status", "--state-dir", str(home)], home)
            assert f"127.0.0.1:{want}" in status.stdout, status.stdout
            # `s3 cache` reaches this stack's Redis, not the one on redis.port
            stats = _s3(["cache", "stats", "--config", str(cfg)], home)
            assert stats.returncode == 0 and f"{n} baselines" in stats.stdout, (home, stats.stdout + stats.stderr)
        # up again on a running stack: the same Redis, no second one
        again = _s3(["up", "--no-generator", "--config", str(cfg), "--state-dir", str(homes[1])], homes[1])
        assert again.returncode == 0 and f"127.0.0.1:{other}" in again.stdout, again.stdout
    finally:
        for home in homes:
            _s3(["down", "--state-dir", str(home)], home)
