"""gRPC servicer of ``s3.v1.Searcher``: validation, the served policy, and episodes in a worker thread.

* Requests are validated on the event loop (cheap); bad input raises :mod:`s3core.errors` and the
  shared interceptor maps it to a status code.
* Episodes run in :func:`s3core.search.episode.run_episodes` in a worker thread, generation batched
  across every episode of the request.  One lock (``SearcherCore.run_lock``) makes the model serve
  one request at a time and makes a policy swap wait for the running request, so no rollout ever
  mixes two policy versions.
* RolloutStream yields each trajectory as its episode finishes (``on_finish`` → an asyncio queue via
  ``loop.call_soon_threadsafe``).  A client that goes away stops its episodes at the next model or
  search call.
* Both RPCs report where the time went as trailing metadata (``s3-generate-seconds``,
  ``s3-search-seconds``, ``s3-rollout-seconds``, ``s3-turns``, ...).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from s3.v1 import common_pb2, searcher_pb2, searcher_pb2_grpc
from s3_searcher import metrics
from s3core.config import SearchConfig, SearcherConfig
from s3core.errors import FailedPrecondition, InvalidArgument, NotFound, S3Error, Unavailable
from s3core.rpc.convert import question_from_pb, search_knobs_from_pb, trajectory_to_pb
from s3core.search.agent import MAX_QUESTION_CHARS, SearchAsk, parse_search, search_result
from s3core.search.episode import EpisodeStats, Policy, SearchFn, run_episodes
from s3core.search.profiles import check_profile_match, get_profile, read_profile_record
from s3core.search.trajectory import Trajectory
from s3core.types import Doc, Question

logger = logging.getLogger("s3_searcher")

SERVICE_NAME = searcher_pb2.DESCRIPTOR.services_by_name["Searcher"].full_name  # "s3.v1.Searcher"

# Caps on request knobs (beyond "0 = server default").
MAX_N = 16
MAX_K = 100
MAX_TURNS = 16
MAX_NEW_TOKENS = 4096
MAX_OBS_TOKENS = 32768
MAX_TEMPERATURE = 5.0

# policy factory: (model or checkpoint path, version) -> Policy
PolicyFactory = Callable[[str, int], Policy]


# --- policy backends ---------------------------------------------------------------------------

def make_policy_factory(sc: SearcherConfig, cache_dir: str | None = None) -> PolicyFactory:
    """A factory that loads a policy of ``sc.backend`` from a model folder / name."""
    if sc.backend == "hf":
        def hf(model: str, version: int) -> Policy:
            import torch

            from s3core.generation.models import resolve_model
            from s3core.search.policy_hf import HFPolicy

            if sc.threads > 0:
                torch.set_num_threads(sc.threads)
            return HFPolicy.from_pretrained(resolve_model(model, cache_dir), dtype=sc.dtype, device=sc.device or None,
                                            max_batch_size=sc.max_batch_size, version=version, name=model)
        return hf
    if sc.backend == "vllm":
        def vllm(model: str, version: int) -> Policy:
            from s3core.search.policy_vllm import VLLMPolicy

            return VLLMPolicy(model, version=version, dtype=sc.dtype, tensor_parallel_size=sc.tensor_parallel_size,
                              gpu_memory_utilization=sc.gpu_memory_utilization, cache_dir=cache_dir)
        return vllm
    if sc.backend == "openai":
        tokenizers: dict[str, Any] = {}

        def openai(model: str, version: int) -> Policy:
            from transformers import AutoTokenizer

            from s3core.generation.models import resolve_model
            from s3core.generation.openai_backend import api_key_from_env
            from s3core.search.policy_openai import OpenAIPolicy

            tok_name = sc.tokenizer or sc.model
            if tok_name not in tokenizers:
                tokenizers[tok_name] = AutoTokenizer.from_pretrained(resolve_model(tok_name, cache_dir))
            return OpenAIPolicy(sc.base_url, model, tokenizers[tok_name], api_key=api_key_from_env(sc.api_key_env),
                                max_batch_size=sc.max_batch_size, version=version)
        return openai
    raise InvalidArgument(f"unknown searcher backend {sc.backend!r} (hf, openai, vllm)")


# --- core: the served policy and the episode runs ----------------------------------------------

class Cancelled(S3Error):
    """The caller went away; the episodes of its request were abandoned."""


@dataclass
class Served:
    policy: Policy
    version: int
    model: str  # configured model name or checkpoint path it was loaded from
    checkpoint_path: str  # "" for the policy loaded at start-up
    trained_profile: str = ""  # name@version its folder records it was trained with ("" = none recorded)


@dataclass
class RolloutJob:
    questions: list[Question]
    cfg: SearchConfig
    temperature: float
    n: int
    seed: int
    expect_version: int


@dataclass
class RolloutResult:
    trajectories: list[Trajectory]
    stats: EpisodeStats
    version: int
    seconds: float
    retries: int


class _Timed:
    """The served policy, seen through a cancellation check and the generate-time histogram."""

    def __init__(self, inner: Policy, cancelled: threading.Event) -> None:
        self._inner = inner
        self._cancelled = cancelled
        self.tokenizer = inner.tokenizer

    def __getattr__(self, name: str) -> Any:  # set_seed, eos_token_ids, version, ...
        return getattr(self._inner, name)

    def generate(self, batch: list[list[int]], max_new_tokens: int, temperature: float,
                 stop: list[str]) -> list[list[int]]:
        if self._cancelled.is_set():
            raise Cancelled("rollout cancelled by the caller")
        t0 = time.perf_counter()
        out = self._inner.generate(batch, max_new_tokens, temperature, stop)
        metrics.GENERATE_SECONDS.observe(time.perf_counter() - t0)
        return out


class SearcherCore:
    """The served policy plus the one-at-a-time episode runner (no gRPC in here)."""

    def __init__(self, search_cfg: SearchConfig, sc: SearcherConfig, search: SearchFn,
                 factory: PolicyFactory, retries: Callable[[], int] = lambda: 0) -> None:
        search_cfg.validate("search")
        self.search_cfg = search_cfg
        self.sc = sc
        self._search = search
        self._factory = factory
        self._retries = retries
        self._served: Served | None = None
        self.profile = get_profile(sc.prompt_profile)  # the layout every episode is rendered in
        self.run_lock = threading.Lock()  # the model runs one request at a time; swaps wait for it
        self._load_lock = threading.Lock()  # one LoadPolicy at a time

    # -- state --
    @property
    def ready(self) -> bool:
        return self._served is not None

    @property
    def served(self) -> Served:
        s = self._served
        if s is None:
            raise Unavailable("the searcher policy is still loading")
        return s

    def check_profile(self, folder: str) -> str:
        """The training profile ``folder`` records, checked against the served one: a mismatch is
        logged, or refused (InvalidArgument) with ``searcher.prompt_profile_mismatch: refuse``."""
        trained = read_profile_record(folder) if folder and Path(folder).is_dir() else ""
        msg = check_profile_match(self.profile, trained, strict=self.sc.prompt_profile_mismatch == "refuse")
        if msg:
            logger.warning("%s: %s", folder, msg)
        return trained

    def load_initial(self) -> None:
        t0 = time.perf_counter()
        trained = self.check_profile(self.sc.model)
        policy = self._factory(self.sc.model, 0)
        self._served = Served(policy, 0, self.sc.model, "", trained)
        metrics.POLICY_VERSION.set(0)
        logger.info("searcher policy ready: backend=%s model=%s version=0 (%.1fs)", self.sc.backend, self.sc.model,
                    time.perf_counter() - t0)

    def resolve_checkpoint(self, path: str) -> str:
        """Where LoadPolicy should load ``path`` from; NotFound / InvalidArgument when it cannot be a model."""
        if not path.strip():
            raise InvalidArgument("checkpoint_path is empty")
        if self.sc.backend == "openai":
            return path  # the endpoint's model name; nothing to check locally
        if path.startswith("embedded:"):
            return path
        try:
            return self._check_folder(path)
        except (OSError, ValueError) as exc:  # name too long, NUL byte, ...: not a folder name
            raise InvalidArgument(f"checkpoint_path is not a usable path: {type(exc).__name__}: {exc}") from None

    def _check_folder(self, path: str) -> str:
        p = Path(path).expanduser()
        if self.sc.checkpoint_dir:
            root = Path(self.sc.checkpoint_dir).expanduser().resolve()
            p = (p if p.is_absolute() else root / p).resolve()
            if p != root and root not in p.parents:
                raise InvalidArgument(f"checkpoint {path} is outside searcher.checkpoint_dir ({root})")
        if not p.exists():
            raise NotFound(f"checkpoint {path}: no such folder")
        if not p.is_dir():
            raise InvalidArgument(f"checkpoint {path} is a file; give a Hugging Face model folder")
        if not (p / "config.json").is_file():
            raise InvalidArgument(f"checkpoint {path} is not a Hugging Face model folder (no config.json)")
        return str(p)

    def load_policy(self, path: str, version: int) -> Served:
        """Load ``path`` as ``version`` and swap it in between rollouts; the old policy keeps serving
        when anything fails."""
        if version < 1:
            raise InvalidArgument(f"version must be >= 1 (0 is the policy loaded at start-up), got {version}")
        _ = self.served  # not while the first policy is still loading
        target = self.resolve_checkpoint(path)
        trained = self.check_profile(target)  # before any work: a refused policy never replaces the served one
        with self._load_lock:
            t0 = time.perf_counter()
            reload = getattr(self.served.policy, "reload", None)
            if callable(reload):  # vLLM: new weights into the running engine, under the run lock
                return self._reload_in_place(reload, path, target, version, t0, trained)
            try:
                policy = self._factory(target, version)
            except S3Error:
                metrics.POLICY_LOADS.labels("error").inc()
                raise
            except Exception as exc:  # noqa: BLE001 - a broken folder: the caller's input, old policy stays
                metrics.POLICY_LOADS.labels("error").inc()
                logger.warning("LoadPolicy %s failed: %s: %s", path, type(exc).__name__, exc)
                raise InvalidArgument(f"cannot load a policy from {path}: {type(exc).__name__}: {exc}") from None
            new = Served(policy, int(version), target, path, trained)
            with self.run_lock:
                old, self._served = self._served, new
            metrics.POLICY_VERSION.set(version)
            metrics.POLICY_LOADS.labels("ok").inc()
            logger.info("policy version %d loaded from %s in %.1fs", version, path, time.perf_counter() - t0)
        close = getattr(old.policy, "close", None) if old is not None else None
        if callable(close):
            close()
        return new

    def close(self) -> None:
        """Release the served policy (a vLLM engine and its processes); the core serves no more."""
        served, self._served = self._served, None
        close = getattr(served.policy, "close", None) if served is not None else None
        if callable(close):
            close()

    def _reload_in_place(self, reload: Callable[..., float], path: str, target: str, version: int,
                         t0: float, trained: str = "") -> Served:
        """Publish ``version`` by loading ``target`` into the served policy's running engine.

        The run lock is held throughout: the rollout in progress finishes on the old version, the
        next one starts on the new weights, and none sees both."""
        with self.run_lock:
            try:
                seconds = reload(target, int(version), name=target)
            except S3Error:
                metrics.POLICY_LOADS.labels("error").inc()
                raise
            except Exception as exc:  # noqa: BLE001 - the old weights were restored by the policy
                metrics.POLICY_LOADS.labels("error").inc()
                logger.warning("LoadPolicy %s (in place) failed: %s: %s", path, type(exc).__name__, exc)
                raise InvalidArgument(f"cannot load a policy from {path}: {type(exc).__name__}: {exc}") from None
            new = Served(self.served.policy, int(version), target, path, trained)
            self._served = new
        metrics.POLICY_VERSION.set(version)
        metrics.POLICY_LOADS.labels("ok").inc()
        logger.info("policy version %d loaded in place from %s in %.2fs (weights %.2fs)", version, path,
                    time.perf_counter() - t0, seconds)
        return new

    def run(self, job: RolloutJob, cancelled: threading.Event,
            on_finish: Callable[[Trajectory], None] | None = None) -> RolloutResult:
        """Run the job's episodes (blocking; call from a worker thread)."""
        with self.run_lock:
            if cancelled.is_set():
                raise Cancelled("rollout cancelled by the caller")
            served = self.served
            if job.expect_version and job.expect_version != served.version:
                raise FailedPrecondition(
                    f"the request expects policy version {job.expect_version}, but version {served.version} is served"
                )
            t0 = time.perf_counter()
            retries0 = self._retries()
            stats = EpisodeStats()

            def search(queries: list[str], k: int) -> list[list[Doc]]:
                if cancelled.is_set():
                    raise Cancelled("rollout cancelled by the caller")
                s0 = time.perf_counter()
                out = self._search(queries, k)
                metrics.SEARCH_SECONDS.observe(time.perf_counter() - s0)
                return out

            def finished(traj: Trajectory) -> None:
                metrics.EPISODES.inc()
                if on_finish is not None:
                    on_finish(traj)

            trajs = run_episodes(job.questions, _Timed(served.policy, cancelled), search, job.cfg, job.temperature,
                                 n=job.n, seed=job.seed, policy_version=served.version, stats=stats,
                                 on_finish=finished, profile=self.profile)
            seconds = time.perf_counter() - t0
        metrics.TURNS.inc(stats.turns)
        metrics.INVALID_TURNS.inc(stats.invalid_turns)
        metrics.SEARCHES.inc(stats.searches)
        metrics.GENERATED_TOKENS.inc(stats.generated_tokens)
        return RolloutResult(trajs, stats, served.version, seconds, self._retries() - retries0)


# --- validation ----------------------------------------------------------------------------------

def _cap(name: str, value: int, cap: int) -> None:
    if value > cap:
        raise InvalidArgument(f"knobs.{name} is {value}; at most {cap}")


def validate_request(request: searcher_pb2.RolloutRequest, sc: SearcherConfig, defaults: SearchConfig) -> RolloutJob:
    """A :class:`RolloutJob` from a request, or InvalidArgument naming the bad field."""
    nq = len(request.questions)
    if nq == 0:
        raise InvalidArgument("no questions in the request")
    if nq > sc.max_questions:
        raise InvalidArgument(f"{nq} questions in one request; at most {sc.max_questions} (searcher.max_questions)")
    questions = []
    for i, q in enumerate(request.questions):
        if not q.question.strip():
            raise InvalidArgument(f"questions[{i}].question is empty")
        if len(q.question) > MAX_QUESTION_CHARS:
            raise InvalidArgument(f"questions[{i}].question is {len(q.question)} characters long "
                                  f"(at most {MAX_QUESTION_CHARS})")
        questions.append(question_from_pb(q))
    knobs = request.knobs
    if knobs.n > MAX_N:
        raise InvalidArgument(f"knobs.n is {knobs.n}; at most {MAX_N} trajectories per question")
    if not math.isnan(knobs.temperature) and knobs.temperature > MAX_TEMPERATURE:
        raise InvalidArgument(f"knobs.temperature must be in [0, {MAX_TEMPERATURE}], got {knobs.temperature:g}")
    cfg, temperature, n, seed = search_knobs_from_pb(knobs, defaults)
    for name, cap in (("initial_k", MAX_K), ("retrieve_k", MAX_K), ("select_max", MAX_K), ("max_turns", MAX_TURNS),
                      ("max_new_tokens", MAX_NEW_TOKENS), ("max_obs_tokens", MAX_OBS_TOKENS)):
        _cap(name, getattr(knobs, name), cap)
    if request.expect_policy_version < 0:
        raise InvalidArgument(f"expect_policy_version must be >= 0 (0 = any), got {request.expect_policy_version}")
    return RolloutJob(questions, cfg, temperature, n, seed, int(request.expect_policy_version))


# --- the search agent: POST /search and the Search RPC ------------------------------------------

# (question, context docs) -> the generator's answer
Answerer = Callable[[str, list[Doc]], str]


def run_search(core: SearcherCore, ask: SearchAsk, answerer: Answerer | None,
               cancelled: threading.Event | None = None) -> dict[str, Any]:
    """One greedy s3 episode for a validated request (blocking; call from a worker thread), shaped by
    :func:`s3core.search.agent.search_result`; with ``ask.answer`` also the generator's answer."""
    job = RolloutJob([ask.as_question()], ask.cfg, ask.cfg.temperature_eval, 1, 0, 0)
    result = core.run(job, cancelled or threading.Event())
    t = result.trajectories[0]
    answer = answerer(ask.question, list(t.context)) if ask.answer and answerer is not None else None
    return search_result(ask, t, result.version, result.seconds, answer)


def search_http(core: SearcherCore, body: Any, answerer: Answerer | None = None) -> tuple[int, Any]:
    """``POST /search``: one greedy s3 episode for ``{"question", "preset"?, "answer"?}``.

    Returns the context documents the searcher gathered (what a user's own LLM should read), the
    queries it issued, its turns and the policy version; with ``"answer": true`` also the generator's
    answer from that context.  Bad input is InvalidArgument (HTTP 400) naming the field."""
    ask = parse_search(body, core.search_cfg, can_answer=answerer is not None)
    _ = core.served  # UNAVAILABLE (503) while the policy loads
    return 200, run_search(core, ask, answerer)


def search_ask_from_pb(request: searcher_pb2.SearchAgentRequest, core: SearcherCore,
                       can_answer: bool) -> SearchAsk:
    """The Search RPC's request through the same checks as ``POST /search`` (proto3: an empty preset is
    no preset)."""
    body: dict[str, Any] = {"question": request.question, "answer": bool(request.answer)}
    if request.preset:
        body["preset"] = request.preset
    return parse_search(body, core.search_cfg, can_answer=can_answer)


def search_response_pb(out: dict[str, Any]) -> searcher_pb2.SearchAgentResponse:
    resp = searcher_pb2.SearchAgentResponse(question=out["question"], queries=out["queries"], turns=out["turns"],
                                            policy_version=out["policy_version"], seconds=out["seconds"])
    resp.context.extend(common_pb2.Document(id=d["id"], title=d["title"], text=d["text"]) for d in out["context"])
    if "answer" in out:
        resp.answer = out["answer"]
    return resp


# --- the servicer --------------------------------------------------------------------------------

def _trailer(result: RolloutResult) -> tuple[tuple[str, str], ...]:
    s = result.stats
    return (
        ("s3-policy-version", str(result.version)),
        ("s3-rollout-seconds", f"{result.seconds:.6f}"),
        ("s3-generate-seconds", f"{s.generate_s:.6f}"),
        ("s3-search-seconds", f"{s.search_s:.6f}"),
        ("s3-generate-calls", str(s.generate_calls)),
        ("s3-search-calls", str(s.search_calls)),
        ("s3-turns", str(s.turns)),
        ("s3-searches", str(s.searches)),
        ("s3-generated-tokens", str(s.generated_tokens)),
        ("s3-retrieval-retries", str(result.retries)),
    )


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so an abandoned run's error is not logged as "never retrieved"


_END = object()


class SearcherServicer(searcher_pb2_grpc.SearcherServicer):
    def __init__(self, core: SearcherCore, answerer: Answerer | None = None) -> None:
        self.core = core
        self.answerer = answerer  # the generator behind "answer": true (searcher --generator)

    def search_http(self, body: Any) -> tuple[int, Any]:
        """``POST /search`` (runs on the side server's thread)."""
        return search_http(self.core, body, self.answerer)

    def _job(self, request: searcher_pb2.RolloutRequest) -> RolloutJob:
        _ = self.core.served  # UNAVAILABLE while loading, before any other check
        return validate_request(request, self.core.sc, self.core.search_cfg)

    def _run_pb(self, job: RolloutJob, cancelled: threading.Event) -> tuple[searcher_pb2.RolloutResponse, RolloutResult]:
        result = self.core.run(job, cancelled)
        resp = searcher_pb2.RolloutResponse(policy_version=result.version)
        resp.trajectories.extend(trajectory_to_pb(t) for t in result.trajectories)
        return resp, result

    async def Rollout(self, request: searcher_pb2.RolloutRequest, context: Any) -> searcher_pb2.RolloutResponse:  # noqa: N802
        job = self._job(request)
        cancelled = threading.Event()
        t0 = time.perf_counter()
        task = asyncio.ensure_future(asyncio.to_thread(self._run_pb, job, cancelled))
        task.add_done_callback(_ignore_result)
        try:
            resp, result = await asyncio.shield(task)
        finally:
            if not task.done():
                cancelled.set()
        metrics.ROLLOUT_SECONDS.observe(time.perf_counter() - t0)
        context.set_trailing_metadata(_trailer(result))
        return resp

    async def RolloutStream(self, request: searcher_pb2.RolloutRequest, context: Any):  # noqa: N802, ANN201
        job = self._job(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def on_finish(traj: Trajectory) -> None:  # worker thread
            loop.call_soon_threadsafe(queue.put_nowait, trajectory_to_pb(traj))

        t0 = time.perf_counter()
        task = asyncio.ensure_future(asyncio.to_thread(self.core.run, job, cancelled, on_finish))
        task.add_done_callback(_ignore_result)
        task.add_done_callback(lambda _: queue.put_nowait(_END))  # after every queued trajectory
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                yield item
            result = task.result()  # raises the run's error, after what was streamed
        finally:
            if not task.done():
                cancelled.set()
        metrics.ROLLOUT_SECONDS.observe(time.perf_counter() - t0)
        context.set_trailing_metadata(_trailer(result))

    async def LoadPolicy(self, request: searcher_pb2.LoadPolicyRequest, context: Any) -> searcher_pb2.LoadPolicyResponse:  # noqa: N802
        served = await asyncio.to_thread(self.core.load_policy, request.checkpoint_path, int(request.version))
        return searcher_pb2.LoadPolicyResponse(version=served.version)

    async def PolicyInfo(self, request: searcher_pb2.PolicyInfoRequest, context: Any) -> searcher_pb2.PolicyInfoResponse:  # noqa: N802
        s = self.core.served
        return searcher_pb2.PolicyInfoResponse(model=s.model, version=s.version, checkpoint_path=s.checkpoint_path,
                                               prompt_profile=self.core.profile.tag,
                                               trained_prompt_profile=s.trained_profile)

    async def Search(self, request: searcher_pb2.SearchAgentRequest, context: Any) -> searcher_pb2.SearchAgentResponse:  # noqa: N802
        _ = self.core.served  # UNAVAILABLE while loading, before any other check
        ask = search_ask_from_pb(request, self.core, self.answerer is not None)
        cancelled = threading.Event()
        task = asyncio.ensure_future(asyncio.to_thread(run_search, self.core, ask, self.answerer, cancelled))
        task.add_done_callback(_ignore_result)
        try:
            out = await asyncio.shield(task)
        finally:
            if not task.done():
                cancelled.set()  # the caller went away: its episode stops at the next model or search call
        return search_response_pb(out)
