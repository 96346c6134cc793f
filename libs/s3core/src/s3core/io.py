"""Atomic file writing (nothing half-written survives a crash) and output checks made before work.

Files and directories written here get the modes a plain ``open()`` / ``mkdir()`` would give them
(``0666`` / ``0777`` minus the umask), not ``tempfile``'s private ``0600`` / ``0700``: results,
manifests and indexes on a shared volume stay readable by the other users a umask allows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from s3core.errors import InvalidArgument


def _umask() -> int:
    try:  # Linux: read it without changing it (setting it races with other threads creating files)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, and restore it at once
    os.umask(mask)
    return mask


def check_output_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` is an existing directory or can be created as one, in a writable place; else
    :class:`InvalidArgument` naming ``what``.  Call before any work (services, models, hours of compute)."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise InvalidArgument(f"{what} {d} is an existing file, not a directory")
    probe = d
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidArgument(f"{what} {d}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidArgument(f"{what} {d}: {probe} is not writable")
    return d


def check_output_file(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` can be written as a file: not a directory, and its folder exists or can be created."""
    f = Path(path)
    if f.is_dir():
        raise InvalidArgument(f"{what} {f} is a directory, not a file")
    if f.exists() and not os.access(f, os.W_OK):
        raise InvalidArgument(f"{what} {f} is not writable")
    check_output_dir(f.parent, what)
    return f


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success fsync and rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")


def write_jsonl(path: str | os.PathLike[str], rows: Any) -> None:
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_dirs(target: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed :func:`atomic_dir` builds of ``target`` left next to it -- ``.NAME.HOST-PID-*.tmp``
    build dirs and ``.NAME.old-HOST-PID`` replaced ones (GBs for an index at wiki scale) -- when that
    process is gone.  Only entries of this host are judged (another pod's pid means nothing here); a
    live process' build is never touched.  Returns what was removed."""
    t = Path(target)
    host = _host_tag()
    pat = re.compile(rf"^\.{re.escape(t.name)}\.(?:old-)?{re.escape(host)}-(\d+)(?:-.*\.tmp)?$")
    removed = []
    try:
        entries = [e for e in t.parent.iterdir() if e.name.startswith(f".{t.name}.")]
    except OSError:
        return removed
    for e in entries:
        m = pat.match(e.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                e.unlink()
        if not e.exists():
            removed.append(e)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temp name, then swap it into place in one rename.

    An existing directory at ``path`` is replaced only after the new one is complete.  The temp name
    carries this host and pid, so that a later build sweeps what a killed one left
    (:func:`sweep_stale_dirs`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_dirs(target)
    tag = f"{_host_tag()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}-", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # as mkdir() would create it, not mkdtemp's 0700
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{tag}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
