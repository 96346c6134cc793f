"""``s3.v1`` controller messages <-> :mod:`s3core.jobmodel` records (job kinds, states, records, events)."""

from __future__ import annotations

import json

from s3.v1 import controller_pb2
from s3core.errors import InvalidArgument
from s3core.jobmodel import KINDS, STATES, JobEvent, JobRecord

_KIND_TO_PB: dict[str, controller_pb2.JobKind.ValueType] = {
    k: controller_pb2.JobKind.Value(f"JOB_KIND_{k.upper()}") for k in KINDS}
_KIND_FROM_PB: dict[int, str] = {int(v): k for k, v in _KIND_TO_PB.items()}
_STATE_TO_PB: dict[str, controller_pb2.JobState.ValueType] = {
    s: controller_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in STATES}
_STATE_FROM_PB: dict[int, str] = {int(v): s for s, v in _STATE_TO_PB.items()}


def kind_to_pb(kind: str) -> controller_pb2.JobKind.ValueType:
    return _KIND_TO_PB.get(kind, controller_pb2.JOB_KIND_UNSPECIFIED)


def kind_from_pb(value: int, field: str = "kind") -> str:
    """"" for UNSPECIFIED; InvalidArgument for a number this build does not know."""
    if value == controller_pb2.JOB_KIND_UNSPECIFIED:
        return ""
    if value not in _KIND_FROM_PB:
        raise InvalidArgument(f"{field}: unknown job kind {value}")
    return _KIND_FROM_PB[value]


def state_to_pb(state: str) -> controller_pb2.JobState.ValueType:
    return _STATE_TO_PB.get(state, controller_pb2.JOB_STATE_UNSPECIFIED)


def state_from_pb(value: int, field: str = "state") -> str:
    if value == controller_pb2.JOB_STATE_UNSPECIFIED:
        return ""
    if value not in _STATE_FROM_PB:
        raise InvalidArgument(f"{field}: unknown job state {value}")
    return _STATE_FROM_PB[value]


def job_to_pb(rec: JobRecord) -> controller_pb2.Job:
    return controller_pb2.Job(
        id=rec.id, kind=kind_to_pb(rec.kind), state=state_to_pb(rec.state), spec_yaml=rec.spec_yaml,
        labels=dict(rec.labels), reason=rec.reason, attempts=rec.attempts, created_at=rec.created_at,
        started_at=rec.started_at, finished_at=rec.finished_at, progress=rec.progress,
        artifacts=dict(rec.artifacts), backend=rec.backend, max_attempts=rec.max_attempts, request_id=rec.request_id,
        progress_message=rec.progress_message, heartbeat_at=rec.heartbeat_at, worker=rec.worker,
        cancel_requested=bool(rec.cancel_requested),
        run_record_json=json.dumps(rec.run_record, ensure_ascii=False, sort_keys=True) if rec.run_record else "",
        workdir=rec.workdir, updated_at=rec.updated_at,
    )


def job_from_pb(p: controller_pb2.Job) -> JobRecord:
    try:
        run_record = json.loads(p.run_record_json) if p.run_record_json else {}
    except ValueError:
        run_record = {"unparsed": p.run_record_json}
    return JobRecord(
        id=p.id, kind=_KIND_FROM_PB.get(p.kind, ""), state=_STATE_FROM_PB.get(p.state, ""), spec_yaml=p.spec_yaml,
        labels=dict(p.labels), reason=p.reason, attempts=p.attempts, max_attempts=p.max_attempts,
        created_at=p.created_at, started_at=p.started_at, finished_at=p.finished_at, updated_at=p.updated_at,
        progress=p.progress, progress_message=p.progress_message, artifacts=dict(p.artifacts), backend=p.backend,
        request_id=p.request_id, workdir=p.workdir, worker=p.worker, heartbeat_at=p.heartbeat_at,
        cancel_requested="requested" if p.cancel_requested else "", run_record=run_record,
    )


def event_to_pb(ev: JobEvent) -> controller_pb2.JobEvent:
    msg = controller_pb2.JobEvent(job_id=ev.job_id, time=ev.time, event_id=ev.id, attempt=ev.attempt)
    if ev.type == "state":
        msg.state = state_to_pb(ev.state)
        msg.reason = ev.reason
    elif ev.type == "progress":
        msg.progress = ev.progress
        msg.message = ev.message
    else:
        msg.log_line = ev.message
    return msg


def event_from_pb(p: controller_pb2.JobEvent) -> JobEvent:
    which = p.WhichOneof("event")
    ev = JobEvent(id=p.event_id, job_id=p.job_id, time=p.time, type="log", attempt=p.attempt, reason=p.reason)
    if which == "state":
        ev.type, ev.state = "state", _STATE_FROM_PB.get(p.state, "")
    elif which == "progress":
        ev.type, ev.progress, ev.message = "progress", p.progress, p.message
    else:
        ev.message = p.log_line
    return ev
