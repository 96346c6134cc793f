"""Typed gRPC clients.  They set deadlines, wait for health, and turn ``grpc.RpcError`` into
:mod:`s3core.errors` so callers (the CLI, the eval pipeline, other services) never see raw gRPC."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import (
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
    retriever_pb2,
    retriever_pb2_grpc,
    searcher_pb2,
    searcher_pb2_grpc,
)
from s3core.errors import S3Error, Unavailable
from s3core.jobmodel import JobEvent, JobRecord
from s3core.rpc.auth import with_token
from s3core.rpc.convert import doc_to_pb, docs_from_pb, question_to_pb, search_knobs_to_pb, trajectory_from_pb
from s3core.rpc.convert_controller import event_from_pb, job_from_pb, kind_to_pb, state_to_pb
from s3core.rpc.convert_learner import scored_to_pb
from s3core.rpc.errors import from_rpc_error
from s3core.rpc.tls import open_channel
from s3core.search.scored import ScoredTrajectory
from s3core.search.trajectory import Trajectory
from s3core.types import Doc, Question

logger = logging.getLogger(__name__)

REFUSED_GRACE_S = 10.0  # wait_ready: a port refusing connections this long is a wrong or stale address
WAIT_NOTE_S = 10.0  # wait_ready: say what is waited for this often
_NOT_GRPC = ("Failed parsing HTTP/2", "Trying to connect an http1.x server")
_KNOWN_SERVICES = ("s3.v1.Retriever", "s3.v1.Generator", "s3.v1.Searcher", "s3.v1.Learner", "s3.v1.Controller")



def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host in ("localhost", "::1") or host.startswith("127.")


_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class _Client:
    service = ""

    def __init__(self, address: str, timeout: float = 120.0, token: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        # sends `authorization: Bearer <token>`: the given token, else the one $S3_AUTH_TOKEN /
        # $S3_AUTH_TOKEN_FILE configure ("" = none); TLS when $S3_TLS_CA_FILE is set (s3core.rpc.tls)
        self.channel = with_token(open_channel(address, options=_OPTIONS), token)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def wait_ready(self, timeout: float = 300.0, refused_grace: float = REFUSED_GRACE_S) -> None:
        """Block until the server's health check says SERVING (its index or model is loaded).

        Fails fast, with a message saying what is at the address, when it cannot be the service
        asked for: another gRPC service (health answers NOT_FOUND for this service's name), something
        that does not speak gRPC (e.g. a service's HTTP port), or a port that keeps refusing connections
        for ``refused_grace`` seconds (a wrong or stale address; a server binds its port before it
        loads, so one starting up is not refused for long).  The refusal rule applies to loopback
        addresses only: behind a cluster Service a refused connection also means "no pod ready yet",
        which is worth the whole ``timeout``.  While waiting, says what it waits for.
        """
        if not _is_loopback(self.address):
            refused_grace = timeout
        start = time.monotonic()
        deadline = start + timeout
        last = "no answer"
        refused_since: float | None = None
        next_note = start + WAIT_NOTE_S
        while time.monotonic() < deadline:
            try:
                resp = self._health.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=5.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                refused_since = None
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                details = (exc.details() if hasattr(exc, "details") else "") or ""
                last = code.name if code is not None else str(exc)
                if code == grpc.StatusCode.NOT_FOUND:
                    raise Unavailable(f"{self.address} is not a {self.service} server: it serves "
                                      f"{self._what_is_there()} (a wrong or swapped address?)") from None
                if code == grpc.StatusCode.UNAVAILABLE and any(m in details for m in _NOT_GRPC):
                    raise Unavailable(f"{self.address} does not speak gRPC ({details.rsplit(': ', 1)[-1]}): "
                                      f"not a {self.service} server -- an HTTP (/metrics) port or another "
                                      "program's?") from None
                if code == grpc.StatusCode.UNAVAILABLE and "refused" in details.lower():
                    now = time.monotonic()
                    refused_since = now if refused_since is None else refused_since
                    if now - refused_since >= refused_grace:
                        raise Unavailable(f"{self.service} at {self.address}: connection refused for "
                                          f"{now - refused_since:.0f} s -- nothing listens there (a wrong or "
                                          "stale address, or the service died)") from None
                    last = "connection refused"
                else:
                    refused_since = None
            if time.monotonic() >= next_note:
                logger.warning("waiting for %s at %s to be SERVING (%s, %.0f s so far, at most %.0f s)",
                               self.service, self.address, last, time.monotonic() - start, timeout)
                next_note = time.monotonic() + WAIT_NOTE_S
            time.sleep(0.2)
        raise Unavailable(f"{self.service} at {self.address} not serving after {timeout:.0f}s (last: {last})")

    def _what_is_there(self) -> str:
        """Which of the platform's services the server at this address serves, for a message."""
        found = []
        for name in _KNOWN_SERVICES:
            if name == self.service:
                continue
            try:
                self._health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2.0)
                found.append(name)
            except grpc.RpcError:
                continue
        return ", ".join(found) if found else "some other gRPC service"

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "_Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BaseClient = _Client  # for clients of services defined outside this module (the controller's)


class RetrieverClient(_Client):
    service = "s3.v1.Retriever"

    def __init__(self, address: str, timeout: float = 120.0) -> None:
        super().__init__(address, timeout)
        self._stub = retriever_pb2_grpc.RetrieverStub(self.channel)

    def search(self, queries: Sequence[str], k: int, index: str = "") -> list[list[Doc]]:
        try:
            resp = self._stub.Search(
                retriever_pb2.SearchRequest(queries=list(queries), k=k, index=index), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"retriever {self.address} Search") from None
        return [docs_from_pb(hits.documents) for hits in resp.results]

    def list_indexes(self) -> retriever_pb2.ListIndexesResponse:
        try:
            return self._stub.ListIndexes(retriever_pb2.ListIndexesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"retriever {self.address} ListIndexes") from None


def retriever_client(address: str, timeout: float = 120.0) -> Any:
    """The retriever client for an address: :class:`RetrieverClient` for ``host:port``, and for
    ``host0:port,host1:port,...`` (the shard servers of one sharded index) a
    :class:`~s3core.rpc.sharded.ShardedRetrieverClient` that fans out and merges.  Empty entries or
    a repeated entry raise :class:`~s3core.errors.InvalidArgument`."""
    from s3core.rpc.sharded import ShardedRetrieverClient, parse_retriever_addresses

    addresses = parse_retriever_addresses(address)
    if len(addresses) == 1:
        return RetrieverClient(addresses[0], timeout=timeout)
    return ShardedRetrieverClient(addresses, timeout=timeout)


class GeneratorClient(_Client):
    service = "s3.v1.Generator"

    def __init__(self, address: str, timeout: float = 600.0) -> None:
        super().__init__(address, timeout)
        self._stub = generator_pb2_grpc.GeneratorStub(self.channel)

    def answer(self, items: Sequence[tuple[str, Sequence[Doc]]], max_new_tokens: int = 0) -> generator_pb2.AnswerResponse:
        req = generator_pb2.AnswerRequest(
            items=[generator_pb2.AnswerItem(question=q, documents=[doc_to_pb(d) for d in docs]) for q, docs in items],
            max_new_tokens=max_new_tokens,
        )
        try:
            return self._stub.Answer(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"generator {self.address} Answer") from None

    def judge(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> generator_pb2.JudgeResponse:
        req = generator_pb2.JudgeRequest(
            items=[generator_pb2.JudgeItem(question=q, response=r, golden_answers=list(g)) for q, r, g in items]
        )
        try:
            return self._stub.Judge(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"generator {self.address} Judge") from None

    def complete(self, conversations: Sequence[Sequence[Mapping[str, str]]], max_new_tokens: int,
                 temperature: float = 0.0, stop: Sequence[str] = (), timeout: float | None = None) -> list[str]:
        """Free-form chat completions (the ``Complete`` RPC): one text a conversation of
        ``{"role", "content"}`` messages."""
        if not conversations:
            return []
        req = generator_pb2.CompleteRequest(
            conversations=[
                generator_pb2.Conversation(
                    messages=[generator_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in conv]
                )
                for conv in conversations
            ],
            max_new_tokens=max_new_tokens, temperature=temperature, stop=list(stop),
        )
        try:
            resp = self._stub.Complete(req, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"baseline LLM {self.address} Complete") from None
        return list(resp.texts)

    def model_info(self) -> generator_pb2.ModelInfoResponse:
        try:
            return self._stub.ModelInfo(generator_pb2.ModelInfoRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"generator {self.address} ModelInfo") from None


@dataclass(frozen=True)
class SearchAgentResult:
    """What :meth:`SearcherClient.search` returns: the s3 context for ``question`` (the documents the
    searcher selected, in order), the queries it issued, its turns, the policy version that ran, the
    server's seconds, and the generator's answer when one was asked for (else ``None``)."""

    question: str
    context: list[Doc]
    queries: list[str]
    turns: int
    policy_version: int
    seconds: float
    answer: str | None = None


class SearcherClient(_Client):
    """The searcher service: rollouts (structured trajectories) and policy versions.

    ``knobs`` is a :class:`~s3core.config.SearchConfig` (every knob sent) or a dict of some of
    ``initial_k, retrieve_k, select_max, max_turns, max_new_tokens, max_obs_tokens, temperature``;
    knobs left out take the server's defaults.  After each rollout, ``last_stats`` holds the
    server's account of where the time went (``generate_seconds``, ``search_seconds``,
    ``rollout_seconds``, ``turns``, ``retrieval_retries``, ...).
    """

    service = "s3.v1.Searcher"

    def __init__(self, address: str, timeout: float = 3600.0) -> None:
        super().__init__(address, timeout)
        self._stub = searcher_pb2_grpc.SearcherStub(self.channel)
        self.last_stats: dict[str, float] = {}

    @staticmethod
    def _request(questions: Sequence[Question], knobs: Any, n: int, seed: int,
                 expect_version: int) -> searcher_pb2.RolloutRequest:
        return searcher_pb2.RolloutRequest(
            questions=[question_to_pb(q) for q in questions],
            knobs=search_knobs_to_pb(knobs, n=n, seed=seed),
            expect_policy_version=expect_version,
        )

    def _keep_stats(self, metadata: Any) -> None:
        stats: dict[str, float] = {}
        for key, value in metadata or ():
            if key.startswith("s3-"):
                try:
                    stats[key[3:].replace("-", "_")] = float(value)
                except (TypeError, ValueError):
                    continue
        self.last_stats = stats

    def rollout(self, questions: Sequence[Question], knobs: Mapping[str, Any] | Any = None, n: int = 1,
                seed: int = 0, expect_version: int = 0) -> list[Trajectory]:
        """Run ``n`` episodes per question; :class:`~s3core.search.trajectory.Trajectory` objects in
        question order, then group index."""
        req = self._request(questions, knobs, n, seed, expect_version)
        try:
            resp, call = self._stub.Rollout.with_call(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"searcher {self.address} Rollout") from None
        self._keep_stats(call.trailing_metadata())
        return [trajectory_from_pb(t) for t in resp.trajectories]

    def rollout_stream(self, questions: Sequence[Question], knobs: Mapping[str, Any] | Any = None, n: int = 1,
                       seed: int = 0, expect_version: int = 0) -> Iterator[Trajectory]:
        """Like :meth:`rollout`, but yields each trajectory as its episode finishes (any order)."""
        req = self._request(questions, knobs, n, seed, expect_version)
        call = self._stub.RolloutStream(req, timeout=self.timeout)
        try:
            for t in call:
                yield trajectory_from_pb(t)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"searcher {self.address} RolloutStream") from None
        finally:
            call.cancel()  # a no-op after the stream ended; stops the episodes when the caller breaks off
        self._keep_stats(call.trailing_metadata())

    def load_policy(self, path: str, version: int) -> int:
        """Load the HF model folder ``path`` as policy ``version``; returns the version now served."""
        try:
            resp = self._stub.LoadPolicy(
                searcher_pb2.LoadPolicyRequest(checkpoint_path=str(path), version=int(version)), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"searcher {self.address} LoadPolicy") from None
        return int(resp.version)

    def search(self, question: Question | str, preset: str = "", answer: bool = False) -> SearchAgentResult:
        """The search agent as a service (the ``Search`` RPC, like ``POST /search``): one greedy s3 episode
        for ``question`` (a :class:`~s3core.types.Question` or its text); ``preset`` (e.g. ``"8-3-3"``)
        replaces the searcher's knobs for this call; ``answer=True`` also asks for the generator's answer
        (the searcher must run with ``--generator``).  Bad input raises InvalidArgument naming the field."""
        text = question.question if isinstance(question, Question) else question
        req = searcher_pb2.SearchAgentRequest(question=str(text), preset=str(preset or ""), answer=bool(answer))
        try:
            resp = self._stub.Search(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"searcher {self.address} Search") from None
        return SearchAgentResult(
            question=resp.question, context=docs_from_pb(resp.context), queries=list(resp.queries),
            turns=int(resp.turns), policy_version=int(resp.policy_version), seconds=float(resp.seconds),
            answer=resp.answer if resp.HasField("answer") else None,
        )

    def policy_info(self) -> searcher_pb2.PolicyInfoResponse:
        try:
            return self._stub.PolicyInfo(searcher_pb2.PolicyInfoRequest(), timeout=60.0)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"searcher {self.address} PolicyInfo") from None


__all__ = ["RetrieverClient", "GeneratorClient", "SearcherClient", "SearchAgentResult", "common_pb2", "retriever_client"]


class LearnerClient(_Client):
    """The learner service: RL updates (one per step), checkpoints, status."""

    service = "s3.v1.Learner"

    def __init__(self, address: str, timeout: float = 3600.0) -> None:
        super().__init__(address, timeout)
        self._stub = learner_pb2_grpc.LearnerStub(self.channel)

    def update(self, trajectories: Sequence[Any], step: int, run_state_json: str = "", *, checkpoint: bool = True,
               metric: float | None = None, driver_stats: Mapping[str, float] | None = None
               ) -> learner_pb2.UpdateResponse:
        """``trajectories``: :class:`ScoredTrajectory` records (converted here) or ``learner_pb2.ScoredTrajectory``
        messages."""
        msgs = [scored_to_pb(t) if isinstance(t, ScoredTrajectory) else t for t in trajectories]
        req = learner_pb2.UpdateRequest(trajectories=msgs, step=int(step), run_state_json=run_state_json,
                                        checkpoint=checkpoint, driver_stats=dict(driver_stats or {}))
        if metric is not None:
            req.metric = float(metric)
        try:
            return self._stub.Update(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"learner {self.address} Update") from None

    def save_checkpoint(self, tag: str = "") -> learner_pb2.SaveCheckpointResponse:
        try:
            return self._stub.SaveCheckpoint(learner_pb2.SaveCheckpointRequest(tag=tag), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"learner {self.address} SaveCheckpoint") from None

    def status(self) -> learner_pb2.LearnerStatusResponse:
        try:
            return self._stub.Status(learner_pb2.LearnerStatusRequest(), timeout=60.0)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"learner {self.address} Status") from None


CONTROLLER_SERVICE = "s3.v1.Controller"
CONTROLLER_PORT = 50055
CONTROLLER_HTTP_PORT = 8055


class Unauthenticated(S3Error):
    """The controller refused the call: no token, or a wrong one."""


def _controller_error(exc: grpc.RpcError, what: str) -> S3Error:
    if hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"{what}: {exc.details()} (UNAUTHENTICATED; set S3_AUTH_TOKEN or pass --token-file)")
    return from_rpc_error(exc, what)


class ControllerClient(_Client):
    """The controller service (``s3.v1.Controller``): job records and events in and out (:mod:`s3core.jobmodel`).

    Every call sends ``authorization: Bearer <token>`` when a token is given or configured
    (``$S3_AUTH_TOKEN`` / ``$S3_AUTH_TOKEN_FILE``) and turns UNAUTHENTICATED into :class:`Unauthenticated`.
    """

    service = CONTROLLER_SERVICE

    def __init__(self, address: str, token: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(address, timeout, token)
        self._stub = controller_pb2_grpc.ControllerStub(self.channel)

    def wait_ready(self, timeout: float = 60.0, refused_grace: float = REFUSED_GRACE_S) -> None:
        super().wait_ready(timeout, refused_grace)

    def _call(self, name: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _controller_error(exc, f"controller {self.address} {name}") from None

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
            raise _controller_error(exc, f"controller {self.address} WatchJob") from None
        finally:
            call.cancel()

    def __enter__(self) -> "ControllerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
