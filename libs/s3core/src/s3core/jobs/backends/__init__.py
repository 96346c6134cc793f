"""Where a job's worker runs.  A backend launches a worker for a claimed attempt, tells whether it
is still alive, and stops it; the job store holds everything else, so a restarted controller
re-attaches to the workers of its backend by what the records say (pid and host, or the
Kubernetes object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from s3core.jobs.model import JobRecord
from s3core.jobs.spec import JobSpec


@dataclass
class WorkerInfo:
    """What a launch started."""

    desc: str  # human-readable, shown as Job.worker
    ref: str  # machine-readable handle: "local:<host id>", "kubernetes:Job:<ns>/<name>", ...
    host: str | None = None
    pid: int | None = None
    start: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)


@dataclass
class WorkerStatus:
    """``alive``: True = running, False = gone (``reason`` says how), None = this backend cannot tell
    (another host's process, an external worker): the heartbeat decides."""

    alive: bool | None
    reason: str = ""


UNKNOWN = WorkerStatus(None)
ALIVE = WorkerStatus(True)


class Backend(Protocol):
    name: str

    def validate(self, spec: JobSpec, workdir: str) -> None:
        """Backend-specific checks of a spec at submit time (raise ConfigError naming the field)."""

    def launch(self, job: JobRecord, spec: JobSpec) -> WorkerInfo:
        """Start a worker for ``job.attempts`` (the attempt just claimed)."""

    def check(self, job: JobRecord) -> WorkerStatus:
        """Is the worker of the job's current attempt alive?"""

    def stop(self, job: JobRecord, force: bool = False) -> bool:
        """Ask the worker to stop (SIGTERM / delete); ``force`` = kill now.  False = not ours to stop."""

    def cleanup(self, job: JobRecord) -> None:
        """After the worker died: remove what it left (processes of its group, Kubernetes objects)."""
