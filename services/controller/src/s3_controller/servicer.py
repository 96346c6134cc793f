"""gRPC servicer of ``s3.v1.Controller``: proto <-> :mod:`s3core.jobs`, nothing else.

Job-store calls block on Redis, so they run on a thread pool of their own (WatchJob holds one
thread per open stream, in 1-second ``XREAD BLOCK`` slices).  Domain errors are mapped to status
codes by the shared interceptor: a bad spec is INVALID_ARGUMENT naming the field, an unknown job
NOT_FOUND, an unreachable Redis UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from s3.v1 import controller_pb2, controller_pb2_grpc
from s3core.errors import InvalidArgument
from s3core.jobs.controller import JobController
from s3core.jobs.model import FINAL_STATES
from s3core.rpc.convert_controller import event_to_pb, job_to_pb, kind_from_pb, state_from_pb

SERVICE_NAME = "s3.v1.Controller"
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
WATCH_BLOCK_MS = 1000

T = TypeVar("T")


class ControllerServicer(controller_pb2_grpc.ControllerServicer):
    def __init__(self, controller: JobController, executor: ThreadPoolExecutor) -> None:
        self.c = controller
        self.executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    @staticmethod
    def _id(value: str) -> str:
        if not value.strip():
            raise InvalidArgument("id is empty")
        if len(value) > 200 or any(ch in value for ch in " :*\n"):
            raise InvalidArgument(f"id {value[:200]!r} is not a job id")
        return value

    async def SubmitJob(self, request: controller_pb2.SubmitJobRequest, context: Any) -> controller_pb2.Job:  # noqa: N802
        kind = kind_from_pb(request.kind)
        if len(request.request_id) > 200:
            raise InvalidArgument("request_id is longer than 200 characters")
        job, _ = await self._run(self.c.submit, request.spec_yaml, kind, dict(request.labels), request.request_id,
                                 request.workdir, request.validate_only)
        return job_to_pb(job)

    async def RegisterJob(self, request: controller_pb2.RegisterJobRequest, context: Any) -> controller_pb2.Job:  # noqa: N802
        kind = kind_from_pb(request.kind)
        job = await self._run(self.c.register, request.spec_yaml, kind, dict(request.labels), request.request_id,
                              request.worker, request.backend, request.workdir)
        return job_to_pb(job)

    async def GetJob(self, request: controller_pb2.GetJobRequest, context: Any) -> controller_pb2.Job:  # noqa: N802
        return job_to_pb(await self._run(self.c.store.get, self._id(request.id)))

    async def ListJobs(self, request: controller_pb2.ListJobsRequest, context: Any) -> controller_pb2.ListJobsResponse:  # noqa: N802
        kind = kind_from_pb(request.kind)
        state = state_from_pb(request.state)
        if request.limit < 0 or request.limit > MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit must be in [0, {MAX_LIST_LIMIT}] (0 = {DEFAULT_LIST_LIMIT}), got {request.limit}")
        jobs = await self._run(self.c.store.list, kind, state, dict(request.labels),
                               request.limit or DEFAULT_LIST_LIMIT)
        return controller_pb2.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs])

    async def CancelJob(self, request: controller_pb2.CancelJobRequest, context: Any) -> controller_pb2.Job:  # noqa: N802
        job_id = self._id(request.id)
        return job_to_pb(await self._run(self.c.cancel, job_id, request.reason[:500]))

    async def WatchJob(self, request: controller_pb2.WatchJobRequest,  # noqa: N802
                       context: Any) -> AsyncIterator[controller_pb2.JobEvent]:
        job_id = self._id(request.id)
        store = self.c.store
        job = await self._run(store.get, job_id)  # NOT_FOUND before the stream starts
        after = request.after_event_id
        if request.history_only:
            while True:
                events = await self._run(store.events, job_id, after, 0)
                if not events:
                    return
                for ev in events:
                    after = ev.id
                    yield event_to_pb(ev)
        while True:
            events = await self._run(store.events, job_id, after, 0 if job.final else WATCH_BLOCK_MS)
            ended = False
            for ev in events:
                after = ev.id
                yield event_to_pb(ev)
                ended = ended or (ev.type == "state" and ev.state in FINAL_STATES)
            if job.final and not events:
                return  # finished, and every event sent
            if ended or not events:
                job = await self._run(store.get, job_id)
