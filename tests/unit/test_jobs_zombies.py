"""No zombie workers under the controller (issue 17 item 10): a worker that exits after the controller
forgot it (its job left the running state first, e.g. cancelled) is still collected by the next
reconcile pass, running jobs or not.  Real child processes; the backend's own bookkeeping."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import psutil

from s3core.jobs.backends.local import LocalBackend


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_forgotten_workers_are_reaped(tmp_path) -> None:
    b = LocalBackend("redis://127.0.0.1:1/0", state_dir=tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"]) for _ in range(3)]
    for i, p in enumerate(procs):
        b._children[(f"job-{i}", 1)] = p
        b.forget(f"job-{i}", 1)  # forgotten while still running
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_zombie(p.pid) or not psutil.pid_exists(p.pid) for p in procs):
        time.sleep(0.05)
    # a reconcile pass with no running job of ours (another host's record) still reaps them
    b.check(SimpleNamespace(id="other", attempts=1, worker_host="elsewhere", worker_pid=0, worker_start=""))
    assert not any(_zombie(p.pid) for p in procs), "exited workers left as zombies"
    assert b._forgotten == []
