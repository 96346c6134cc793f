"""Evaluation methods: each maps a batch of questions to what the generator gets (or to an answer).

A method is a function ``(questions, ctx: MethodContext) -> list[MethodOutput]`` (one output per
question, in order), registered by name with :func:`register_method`.  ``MethodOutput.docs`` are the
documents handed to the generator; when ``MethodOutput.answer`` is set the method answered itself
(Search-R1-style) and that answer is scored as is -- the generator is not asked.

Registered here: ``no-retrieval``, ``naive-rag`` and the s3 family (``s3`` and its three context
ablations, spec §3).  The baselines that need a free-text LLM (``deepretrieval``, ``ircot``,
``search-r1``) live in :mod:`s3core.eval.baselines` and register themselves on import (this module
imports it at the end, so ``get_method`` sees every method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from s3core.config import SearchConfig
from s3core.errors import InvalidArgument, S3Error
from s3core.search.context import build_context
from s3core.search.trajectory import Trajectory
from s3core.types import Doc, Question


class SearchFn(Protocol):
    def __call__(self, queries: Sequence[str], k: int) -> list[list[Doc]]: ...


class CompleteFn(Protocol):
    """Free-text LLM calls: chat conversations in, one completion per conversation out.

    ``stop`` strings are cut off (not included in the text), as the generator service's
    ``Complete`` RPC does.  ``temperature`` 0 = greedy.
    """

    def __call__(self, conversations: Sequence[Sequence[dict[str, str]]], max_new_tokens: int,
                 temperature: float = 0.0, stop: Sequence[str] = ()) -> list[str]: ...


# One s3 episode per question, trajectories in question order (the searcher service's Rollout).
RolloutFn = Callable[[Sequence[Question]], list[Trajectory]]


def _qkey(q: Question) -> tuple[str, str, str]:
    return (q.dataset, q.id, q.question)


class TrajectoryCache:
    """Trajectories per question, shared by every s3 variant of one job: the ablations are computed
    on the very same episodes (spec §3), and the searcher runs each question once."""

    def __init__(self) -> None:
        self._by_q: dict[tuple[str, str, str], Trajectory] = {}
        self.rollout_calls = 0

    def __len__(self) -> int:
        return len(self._by_q)

    def get(self, questions: Sequence[Question], rollout: RolloutFn, upcoming: Sequence[Question] = (),
            chunk: int = 0) -> list[Trajectory]:
        """Trajectories of ``questions``, rolling out the missing ones in one call.  That call is
        topped up to ``chunk`` questions with not-yet-cached ones from ``upcoming`` (the rest of
        the dataset), so the searcher batches many episodes even when the generator's batches are
        small."""
        need = {_qkey(q): q for q in questions if _qkey(q) not in self._by_q}
        if need and len(need) < chunk:
            for q in upcoming:
                if len(need) >= chunk:
                    break
                if _qkey(q) not in self._by_q:
                    need.setdefault(_qkey(q), q)
        missing = list(need.values())
        if missing:
            trajs = rollout(missing)
            self.rollout_calls += 1
            if len(trajs) != len(missing):
                raise S3Error(f"the searcher returned {len(trajs)} trajectories for {len(missing)} questions")
            for q, t in zip(missing, trajs):
                self._by_q[_qkey(q)] = t
        return [self._by_q[_qkey(q)] for q in questions]

    def put(self, q: Question, t: Trajectory) -> None:
        """Record ``q``'s trajectory (e.g. one read back from an interrupted run's progress)."""
        self._by_q.setdefault(_qkey(q), t)


@dataclass
class MethodContext:
    """What a method may use.  Fields a method does not need may be None."""

    search: SearchFn | None = None
    k: int = 3  # documents per retrieval for the retrieval baselines (naive RAG's top-k)
    complete: CompleteFn | None = None  # the baseline LLM (see s3core.eval.baselines)
    rollout: RolloutFn | None = None  # s3 episodes via the searcher service; None when no searcher
    search_config: SearchConfig = field(default_factory=SearchConfig)
    trajectories: TrajectoryCache = field(default_factory=TrajectoryCache)
    options: dict[str, Any] = field(default_factory=dict)  # per-method knobs, e.g. {"ircot_steps": 3}
    upcoming: Sequence[Question] = ()  # the questions of the current dataset (set by the runner)

    def rollouts(self, questions: Sequence[Question]) -> list[Trajectory]:
        """One trajectory per question (cached: every s3 variant of a job gets the same ones).
        ``options["rollout_batch_size"]`` (default 32) questions go to the searcher per request."""
        if self.rollout is None:
            raise InvalidArgument("s3 methods need a searcher (give --searcher ADDR or let `s3 eval` start one)")
        chunk = int(self.options.get("rollout_batch_size", 32))
        return self.trajectories.get(questions, self.rollout, self.upcoming, chunk)


@dataclass
class MethodOutput:
    docs: list[Doc]
    answer: str | None = None  # set: the method's own answer is scored; None: the generator answers from docs
    trajectory: Trajectory | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific record, saved with the prediction


Method = Callable[[Sequence[Question], MethodContext], list[MethodOutput]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Method
    needs_retriever: bool  # calls ctx.search
    needs_searcher: bool = False  # calls ctx.rollout
    needs_llm: bool = False  # calls ctx.complete
    uses_docs: bool = True  # hands documents to the generator (answer recall is reported)
    description: str = ""


SPECS: dict[str, MethodSpec] = {}
METHODS: dict[str, Method] = {}
NEEDS_RETRIEVER: dict[str, bool] = {}


def register_method(name: str, needs_retriever: bool, *, needs_searcher: bool = False, needs_llm: bool = False,
                    uses_docs: bool | None = None, description: str = "") -> Callable[[Method], Method]:
    def deco(fn: Method) -> Method:
        if name in SPECS:
            raise ValueError(f"method {name!r} registered twice")
        docs = (needs_retriever or needs_searcher) if uses_docs is None else uses_docs
        desc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        SPECS[name] = MethodSpec(name, fn, needs_retriever, needs_searcher, needs_llm, docs, desc)
        METHODS[name] = fn
        NEEDS_RETRIEVER[name] = needs_retriever
        return fn

    return deco


def get_spec(name: str) -> MethodSpec:
    if name not in SPECS:
        raise InvalidArgument(f"unknown method {name!r} (known: {', '.join(sorted(SPECS))})")
    return SPECS[name]


def get_method(name: str) -> Method:
    return get_spec(name).fn


@register_method("no-retrieval", needs_retriever=False)
def no_retrieval(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """Closed book: the generator answers from its own knowledge."""
    return [MethodOutput(docs=[]) for _ in questions]


@register_method("naive-rag", needs_retriever=True)
def naive_rag(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """Top-k documents for the raw question (the GBR baseline's context)."""
    assert ctx.search is not None
    return [MethodOutput(docs=list(d)) for d in ctx.search([q.question for q in questions], ctx.k)]


# --- s3 and its context ablations (spec §3) -------------------------------------------------------

S3_VARIANTS: dict[str, str] = {
    "s3": "none",
    "s3-no-selection": "no_selection",
    "s3-no-initial": "no_initial",
    "s3-no-selection-no-initial": "both",
}


def _s3_method(ablation: str) -> Method:
    def run(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
        out = []
        for t in ctx.rollouts(questions):
            out.append(MethodOutput(
                docs=build_context(t.blocks, ablation), trajectory=t,
                extra={"ablation": ablation, "turns": len(t.turns), "searches": t.n_searches, "done": t.done,
                       "policy_version": t.policy_version},
            ))
        return out

    return run


_S3_DESCRIPTIONS = {
    "none": "s3: the searcher's rollout, context = selected docs + unselected blocks (spec §3)",
    "no_selection": "s3 ablation: all docs of all blocks (selections ignored)",
    "no_initial": "s3 ablation: spec §3 context without block 0 (the naive-RAG block)",
    "both": "s3 ablation: all docs of the searcher's own blocks (no selection, no block 0)",
}
for _name, _abl in S3_VARIANTS.items():
    register_method(_name, needs_retriever=False, needs_searcher=True, uses_docs=True,
                    description=_S3_DESCRIPTIONS[_abl])(_s3_method(_abl))


from s3core.eval import baselines as _baselines  # noqa: E402,F401  (registers the LLM baselines)
