"""Typed client of the controller service (``s3.v1.Controller``): the CLI's and registered workers'.

Every call sends ``authorization: Bearer <token>`` when a token is given or configured
(``$S3_AUTH_TOKEN`` / ``$S3_AUTH_TOKEN_FILE``), sets a deadline, and turns ``grpc.RpcError`` into
:mod:`s3core.errors` (UNAUTHENTICATED -> :class:`Unauthenticated`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from s3.v1 import controller_pb2, controller_pb2_grpc
from s3core.errors import S3Error
from s3core.jobs.model import JobEvent, JobRecord
from s3core.jobs.pb import event_from_pb, job_from_pb, kind_to_pb, state_to_pb
from s3core.rpc.clients import BaseClient
from s3core.rpc.errors import from_rpc_error

SERVICE_NAME = "s3.v1.Controller"
DEFAULT_PORT = 50055
DEFAULT_HTTP_PORT = 8055


class Unauthenticated(S3Error):
    """The controller refused the call: no token, or a wrong one."""


def _error(exc: grpc.RpcError, what: str) -> S3Error:
    if hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"{what}: {exc.details()} (UNAUTHENTICATED; set S3_AUTH_TOKEN or pass --token-file)")
    return from_rpc_error(exc, what)


class ControllerClient(BaseClient):
    service = SERVICE_NAME

    def __init__(self, address: str, token: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(address, timeout, token)
        self._stub = controller_pb2_grpc.ControllerStub(self.channel)

    def wait_ready(self, timeout: float = 60.0) -> None:
        super().wait_ready(timeout)

    def _call(self, name: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc, f"controller {self.address} {name}") from None

    def submit(self, spec_yaml: str, kind: str = "", labels: Mapping[str, str] | None = None, request_id: str = "",
               workdir: str = "", validate_only: bool = False) -> JobRecord:
        req = controller_pb2.SubmitJobRequest(kind=kind_to_pb(kind), spec_yaml=spec_yaml, labels=dict(labels or {}),
                                              request_id=request_id, workdir=workdir, validate_only=validate_only)
        return job_from_pb(self._call("SubmitJob", req))

    def register(self, spec_yaml: str, kind: str = "", labels: Mapping[str, str] | None = None,
                 request_id: str = "", worker: str = "", backend: str = "external", workdir: str = "") -> JobRecord:
        req = controller_pb2.RegisterJobRequest(kind=kind_to_pb(kind), spec_yaml=spec_yaml, labels=dict(labels or {}),
                                                request_id=request_id, worker=worker, backend=backend,
                                                workdir=workdir)
        return job_from_pb(self._call("RegisterJob", req))

    def get(self, job_id: str) -> JobRecord:
        return job_from_pb(self._call("GetJob", controller_pb2.GetJobRequest(id=job_id)))

    def list(self, kind: str = "", state: str = "", labels: Mapping[str, str] | None = None,
             limit: int = 0) -> list[JobRecord]:
        req = controller_pb2.ListJobsRequest(kind=kind_to_pb(kind), state=state_to_pb(state),
                                             labels=dict(labels or {}), limit=limit)
        return [job_from_pb(j) for j in self._call("ListJobs", req).jobs]

    def cancel(self, job_id: str, reason: str = "") -> JobRecord:
        return job_from_pb(self._call("CancelJob", controller_pb2.CancelJobRequest(id=job_id, reason=reason)))

    def watch(self, job_id: str, after: str = "", history_only: bool = False,
              timeout: float | None = None) -> Iterator[JobEvent]:
        """Events of a job: its history, then live ones until it finishes (``history_only``: just the
        history).  ``timeout`` bounds the whole stream (None = no bound)."""
        req = controller_pb2.WatchJobRequest(id=job_id, after_event_id=after, history_only=history_only)
        call = self._stub.WatchJob(req, timeout=timeout)
        try:
            for ev in call:
                yield event_from_pb(ev)
        except grpc.RpcError as exc:
            raise _error(exc, f"controller {self.address} WatchJob") from None
        finally:
            call.cancel()

    def __enter__(self) -> "ControllerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
