"""The ``local`` backend: each attempt is a ``python -m s3core.jobs.worker`` process on this machine.

Workers start in their own session (process group = their pid), so they outlive a controller
restart, and one ``killpg`` removes a worker together with the services it started.  A worker is
identified by host (hostname + kernel boot id), pid and the process's start time, so a recycled pid
is never mistaken for it.  The controller that started a worker reaps it and reports its exit
status; a restarted controller, no longer its parent, sees only whether it is alive.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from s3core.jobs.backends import ALIVE, UNKNOWN, WorkerInfo, WorkerStatus
from s3core.jobs.model import JobRecord
from s3core.jobs.spec import JobSpec, check_local_paths

logger = logging.getLogger(__name__)

WORKER_MODULE = "s3core.jobs.worker"
REDIS_URL_ENV = "S3_JOBS_REDIS_URL"  # the worker reads the job store URL from here (not argv: ps shows argv)


def host_identity() -> str:
    """``hostname/boot-id-prefix``: equal only for processes of this very boot of this machine."""
    boot = ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        pass
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ..." -- comm may hold spaces and parentheses
    rest = raw[raw.rfind(")") + 2:].split()
    return rest  # rest[0] = state (field 3), rest[19] = starttime (field 22)


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" where /proc is not available)."""
    st = _proc_stat(pid)
    return st[19] if st and len(st) > 19 else ""


def process_alive(pid: int, start: str = "") -> bool:
    """Is ``pid`` a live (non-zombie) process, and the one that started at ``start`` when given?"""
    if pid <= 0:
        return False
    st = _proc_stat(pid)
    if st is not None:
        if st[0] in ("Z", "X"):
            return False
        return not start or (len(st) > 19 and st[19] == start)
    if Path("/proc/self/stat").exists():
        return False  # /proc works here, and has no such pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_reason(pid: int, returncode: int, log: str = "") -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = f"worker pid {pid} was killed by {name}"
    elif returncode == 0:
        why = f"worker pid {pid} exited with code 0 without reporting a final state"
    else:
        why = f"worker pid {pid} exited with code {returncode}"
    last = _last_line(log)
    return f"{why} (last log line: {last})" if last and returncode > 0 else why


def _last_line(log: str) -> str:
    if not log:
        return ""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""


class LocalBackend:
    name = "local"

    def __init__(self, redis_url: str, namespace: str = "s3", state_dir: str | os.PathLike[str] = ".s3",
                 python: str = sys.executable, heartbeat_interval: float = 2.0,
                 env: dict[str, str] | None = None, threads: int = 0) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.state_dir = Path(state_dir).resolve()
        self.python = python
        self.heartbeat_interval = heartbeat_interval
        self.env = dict(env or {})
        if threads > 0:  # several jobs on one machine: no thread oversubscription in torch / BLAS
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                self.env.setdefault(var, str(threads))
        self.host = host_identity()
        self._children: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
        self._forgotten: list[subprocess.Popen[bytes]] = []  # still running when forgotten: reaped later

    def log_path(self, job_id: str, attempt: int) -> Path:
        return self.state_dir / "jobs" / job_id / f"attempt-{attempt}.log"

    # -- Backend ---------------------------------------------------------------------------------------
    def validate(self, spec: JobSpec, workdir: str) -> None:
        check_local_paths(spec, workdir or os.getcwd())

    def launch(self, job: JobRecord, spec: JobSpec) -> WorkerInfo:
        log = self.log_path(job.id, job.attempts)
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", WORKER_MODULE, "--job-id", job.id, "--attempt", str(job.attempts),
               "--namespace", self.namespace, "--state-dir", str(self.state_dir),
               "--heartbeat-interval", str(self.heartbeat_interval)]
        env = {**os.environ, **self.env, REDIS_URL_ENV: self.redis_url, "PYTHONUNBUFFERED": "1",
               "TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "2")}
        cwd = job.workdir if job.workdir and os.path.isdir(job.workdir) else None
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                    env=env, start_new_session=True)
        self._children[(job.id, job.attempts)] = proc
        logger.info("job %s attempt %d: worker pid %d (log %s)", job.id, job.attempts, proc.pid, log)
        return WorkerInfo(desc=f"pid {proc.pid} on {socket.gethostname()}", ref=f"local:{self.host}", host=self.host,
                          pid=proc.pid, start=process_start(proc.pid), artifacts={"log": str(log)})

    def _mine(self, job: JobRecord) -> bool:
        return job.worker_host == self.host and job.worker_pid > 0

    def check(self, job: JobRecord) -> WorkerStatus:
        self.reap()  # every reconcile pass: no exited worker stays a zombie
        if not self._mine(job):
            return UNKNOWN
        child = self._children.get((job.id, job.attempts))
        if child is not None:
            rc = child.poll()
            if rc is None:
                return ALIVE
            del self._children[(job.id, job.attempts)]
            return WorkerStatus(False, exit_reason(child.pid, rc, str(self.log_path(job.id, job.attempts))))
        if process_alive(job.worker_pid, job.worker_start):
            return ALIVE
        return WorkerStatus(False, f"worker pid {job.worker_pid} is gone without reporting a final state "
                                   "(started by an earlier controller, so its exit status is unknown)")

    def stop(self, job: JobRecord, force: bool = False) -> bool:
        if not self._mine(job):
            return False
        if not process_alive(job.worker_pid, job.worker_start):
            self.cleanup(job)
            return True
        if force:
            self._killpg(job.worker_pid)
        else:
            try:
                os.kill(job.worker_pid, signal.SIGTERM)  # the worker stops its services and reports cancelled
            except ProcessLookupError:
                pass
        return True

    def cleanup(self, job: JobRecord) -> None:
        """Kill what is left of the worker's process group (services it started) after it died."""
        if self._mine(job):
            self._killpg(job.worker_pid)
        self.reap()

    @staticmethod
    def _killpg(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> None:
        """Collect exited children (no zombies); their exit status stays readable for :meth:`check`.
        Forgotten workers that were still running are collected here once they exit."""
        for proc in list(self._children.values()):
            proc.poll()
        self._forgotten = [p for p in self._forgotten if p.poll() is None]

    def forget(self, job_id: str, attempt: int) -> None:
        proc = self._children.pop((job_id, attempt), None)
        if proc is not None and proc.poll() is None:
            self._forgotten.append(proc)
