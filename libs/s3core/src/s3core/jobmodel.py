"""Job kinds, states, the state machine, and the records the job store keeps.

State machine (every transition is made atomically in Redis by :mod:`s3core.jobs.store`)::

    pending ──claim──▶ running ──▶ succeeded
       │                  │  ├───▶ failed      (no attempts left, or a permanent error)
       │                  │  ├───▶ cancelled   (cancel requested, or the worker got SIGTERM)
       │                  └──┴───▶ pending     (attempt failed, attempts left: retried)
       ├──cancel──▶ cancelled
       └──────────▶ failed      (a registered job whose launcher never restarted it)

Each claim starts a new *attempt* (``attempts`` += 1); every write a worker makes names its attempt
and is refused once the job has moved on, so a worker that was given up on can never overwrite
the state of a newer attempt (fencing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from s3core.errors import FailedPrecondition, InvalidArgument

KINDS: tuple[str, ...] = ("index", "precompute", "eval", "train", "infer")

PENDING = "pending"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
STATES: tuple[str, ...] = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

BACKENDS: tuple[str, ...] = ("local", "kubernetes", "external")
MAX_RETRY_DELAY_S = 600.0

# allowed state changes: from -> {to}
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, CANCELLED, FAILED}),  # -> failed: a self-launched job nobody restarted
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, PENDING}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def check_state(state: str) -> str:
    if state not in STATES:
        raise InvalidArgument(f"state must be one of {', '.join(STATES)}, got {state!r}")
    return state


def check_transition(job_id: str, old: str, new: str) -> None:
    """Raise :class:`FailedPrecondition` unless ``old -> new`` is an edge of the state machine."""
    if new not in TRANSITIONS.get(old, frozenset()):
        raise FailedPrecondition(f"job {job_id} is {old}; it cannot become {new}")


def is_final(state: str) -> bool:
    return state in FINAL_STATES


@dataclass
class JobRecord:
    """One job as stored in Redis (hash ``<ns>:job:<id>``)."""

    id: str
    kind: str
    state: str = PENDING
    spec_yaml: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    attempts: int = 0  # attempts started so far (the current one while running)
    max_attempts: int = 1
    created_at: float = 0.0
    started_at: float = 0.0  # first attempt's start
    attempt_started_at: float = 0.0  # current attempt's start
    finished_at: float = 0.0
    updated_at: float = 0.0
    progress: float = 0.0
    progress_message: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    backend: str = "local"
    launcher: str = "controller"  # who starts attempts: "controller", or "worker" (registered, e.g. kubectl)
    request_id: str = ""
    workdir: str = ""
    owner: str = ""  # controller that claimed the current attempt
    worker: str = ""  # human-readable: "pid 42 on host-a", "kubernetes Job ns/name"
    worker_ref: str = ""  # what the launcher started: "local:<host id>", "kubernetes:Job:<ns>/<name>", ...
    worker_host: str = ""  # host identity of the worker process (hostname/boot id), set by the worker
    worker_pid: int = 0
    worker_start: str = ""  # the worker process's start time (kernel ticks), against pid reuse
    heartbeat_at: float = 0.0  # worker's clock
    heartbeat_seq: int = 0  # +1 per heartbeat; the controller times staleness with its own clock
    cancel_requested: str = ""  # "" or why: "user: ...", "timeout: ..."
    timeout_s: float = 0.0
    retry_delay_s: float = 0.0  # before attempt 2; doubles per attempt (capped at MAX_RETRY_DELAY_S)
    not_before: float = 0.0  # a retried job waits in pending until then (unix seconds)
    run_record: dict[str, Any] = field(default_factory=dict)

    # -- Redis hash encoding ----------------------------------------------------------------------
    _JSON_FIELDS = ("labels", "artifacts", "run_record")
    _INT_FIELDS = ("attempts", "max_attempts", "worker_pid", "heartbeat_seq")
    _FLOAT_FIELDS = ("created_at", "started_at", "attempt_started_at", "finished_at", "updated_at", "progress",
                     "heartbeat_at", "timeout_s", "retry_delay_s", "not_before")

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in asdict(self).items():
            if name in self._JSON_FIELDS:
                out[name] = json.dumps(value, ensure_ascii=False, sort_keys=True)
            else:
                out[name] = repr(value) if isinstance(value, float) else str(value)
        return out

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> "JobRecord":
        kwargs: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name not in h:
                continue
            raw = h[name]
            if name in cls._JSON_FIELDS:
                try:
                    kwargs[name] = json.loads(raw) if raw else {}
                except ValueError:
                    kwargs[name] = {}
            elif name in cls._INT_FIELDS:
                kwargs[name] = int(float(raw or 0))
            elif name in cls._FLOAT_FIELDS:
                kwargs[name] = float(raw or 0.0)
            else:
                kwargs[name] = raw
        return cls(**kwargs)

    @property
    def final(self) -> bool:
        return is_final(self.state)


@dataclass
class JobEvent:
    """One entry of a job's event stream (``<ns>:job:<id>:events``)."""

    id: str  # Redis stream id, e.g. "1732590000000-0"
    job_id: str
    time: float
    type: str  # "state" | "progress" | "log"
    state: str = ""
    progress: float = 0.0
    message: str = ""  # log line, or what the progress is about
    reason: str = ""
    attempt: int = 0

    def to_fields(self) -> dict[str, str]:
        d = {"type": self.type, "time": repr(self.time), "attempt": str(self.attempt)}
        if self.type == "state":
            d["state"] = self.state
            d["reason"] = self.reason
        elif self.type == "progress":
            d["progress"] = repr(self.progress)
            d["message"] = self.message
        else:
            d["message"] = self.message
        return d

    @classmethod
    def from_fields(cls, event_id: str, job_id: str, f: dict[str, str]) -> "JobEvent":
        return cls(id=event_id, job_id=job_id, time=float(f.get("time", 0) or 0), type=f.get("type", "log"),
                   state=f.get("state", ""), progress=float(f.get("progress", 0) or 0),
                   message=f.get("message", ""), reason=f.get("reason", ""), attempt=int(f.get("attempt", 0) or 0))
