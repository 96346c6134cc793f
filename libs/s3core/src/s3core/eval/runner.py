"""The evaluation loop: method (docs, or its own answer) → generate → score (EM, F1, span, GenAcc)
→ aggregate.

Per batch of questions the method returns one :class:`~s3core.eval.methods.MethodOutput` each; the
generator answers, in one request, every question whose output has no ``answer`` of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from s3core import metrics
from s3core.config import SearchConfig
from s3core.eval.methods import (
    CompleteFn,
    MethodContext,
    MethodSpec,
    RolloutFn,
    SearchFn,
    TrajectoryCache,
    get_spec,
)
from s3core.eval.progress import ProgressLog
from s3core.eval.scoring import score_answers
from s3core.search.trajectory import Trajectory
from s3core.types import Doc, Question

logger = logging.getLogger(__name__)

AnswerFn = Callable[[Sequence[tuple[str, Sequence[Doc]]]], list[str]]
JudgeFn = Callable[[Sequence[tuple[str, str, Sequence[str]]]], list[bool]]


@dataclass
class Prediction:
    dataset: str
    id: str
    question: str
    golden_answers: list[str]
    prediction: str
    doc_ids: list[str]
    em: bool
    f1: float
    span: bool
    judge: bool | None  # None when the judge was not asked (span matched, or judging is off)
    genacc: bool
    answer_in_docs: bool
    answered_by: str = "generator"  # "generator", or "method" when the method answered itself (Search-R1)
    extra: dict[str, Any] = field(default_factory=dict)  # the method's own record (rewritten query, CoT, ...)
    choice: str | None = None  # multiple-choice rows: the option letter the prediction chose (None: none or two)


@dataclass
class DatasetResult:
    n: int = 0
    genacc: float = 0.0
    em: float = 0.0
    f1: float = 0.0
    span: float = 0.0
    answer_recall_at_k: float | None = None
    empty_golds: int = 0  # golds that normalise to nothing: they can never match (s3core.metrics)
    unmatchable: int = 0  # questions whose every gold normalises to nothing (only a judge can accept them)
    judge_calls: int = 0
    mc: int = 0  # questions scored as multiple choice
    mc_accuracy: float | None = None  # share of those whose chosen option is the gold one (None: no MC rows)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["answer_recall@k"] = d.pop("answer_recall_at_k")
        if not self.mc:
            del d["mc"], d["mc_accuracy"]
        return d


@dataclass
class EvalOutcome:
    method: str
    k: int
    datasets: dict[str, DatasetResult] = field(default_factory=dict)
    predictions: list[Prediction] = field(default_factory=list)
    # (dataset, question id, trajectory, context doc ids) for the methods that run s3 episodes
    trajectories: list[tuple[str, str, Trajectory, list[str]]] = field(default_factory=list)
    seconds: float = 0.0

    def average(self) -> dict[str, Any]:
        rs = list(self.datasets.values())
        if not rs:
            return {}
        out: dict[str, Any] = {"n": sum(r.n for r in rs)}
        for key in ("genacc", "em", "f1", "span"):
            out[key] = sum(getattr(r, key) for r in rs) / len(rs)
        recalls = [r.answer_recall_at_k for r in rs if r.answer_recall_at_k is not None]
        out["answer_recall@k"] = sum(recalls) / len(recalls) if recalls else None
        return out


_COUNTERS = ("empty_golds", "unmatchable", "judge_calls", "mc")  # DatasetResult counts a batch adds to


def _chunks(seq: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def evaluate(
    questions: dict[str, list[Question]],
    method: str,
    answer: AnswerFn,
    judge: JudgeFn | None,
    search: SearchFn | None,
    k: int = 3,
    batch_size: int = 8,
    show_progress: bool = True,
    *,
    complete: CompleteFn | None = None,
    rollout: RolloutFn | None = None,
    search_config: SearchConfig | None = None,
    trajectory_cache: TrajectoryCache | None = None,
    options: dict[str, Any] | None = None,
    method_spec: MethodSpec | None = None,
    progress: ProgressLog | None = None,
) -> EvalOutcome:
    """Evaluate ``method`` on each dataset.  ``judge=None`` scores GenAcc by span match only;
    ``options["judge_mode"] = "only"`` makes GenAcc the judge's verdict on every row, and
    ``options["mc"] = "off"`` scores multiple-choice rows as open text (s3core.eval.scoring).
    ``method_spec`` runs a method that is not registered (``s3 score``'s given predictions).

    ``complete`` (the baseline LLM), ``rollout`` (s3 episodes) and ``search_config`` are only needed
    by the methods that use them.  Pass the same ``trajectory_cache`` to several s3 variants to
    evaluate them on the same trajectories.  ``progress`` (:class:`~s3core.eval.progress.ProgressLog`):
    every finished batch is recorded there, and the questions it already holds are not evaluated
    again (an interrupted run resumes; the result equals an uninterrupted one).
    """
    spec = method_spec if method_spec is not None else get_spec(method)
    judge_mode = str((options or {}).get("judge_mode", "fallback"))
    mc = (options or {}).get("mc", "auto") != "off"
    if spec.needs_retriever and search is None:
        raise ValueError(f"method {method!r} needs a retriever")
    if spec.needs_llm and complete is None:
        raise ValueError(f"method {method!r} needs an LLM for free-text calls (complete)")
    if spec.needs_searcher and rollout is None:
        raise ValueError(f"method {method!r} needs a searcher (rollout)")
    ctx = MethodContext(
        search=search, k=k, complete=complete, rollout=rollout, search_config=search_config or SearchConfig(),
        trajectories=trajectory_cache if trajectory_cache is not None else TrajectoryCache(), options=dict(options or {}),
    )
    outcome = EvalOutcome(method=method, k=k)
    start = time.perf_counter()
    total = sum(len(v) for v in questions.values())
    bar = tqdm(total=total, desc=f"eval {method}", unit="q", disable=not show_progress)
    for dataset, qs in questions.items():
        res = DatasetResult()
        recall_hits = 0
        mc_hits = 0
        first, first_traj = len(outcome.predictions), len(outcome.trajectories)
        done = progress.done_ids(dataset) if progress is not None else set()
        for preds_json, trajs_done, delta in (progress.batches.get(dataset, []) if progress is not None else []):
            outcome.predictions.extend(Prediction(**p) for p in preds_json)
            for qid, t, ids in trajs_done:
                outcome.trajectories.append((dataset, qid, t, ids))
            for name in _COUNTERS:
                setattr(res, name, getattr(res, name) + delta.get(name, 0))
            recall_hits += delta.get("recall_hits", 0)
            mc_hits += delta.get("mc_hits", 0)
        if done:
            q_by_id = {q.id: q for q in qs}
            for _, qid, t, _ in outcome.trajectories[first_traj:]:
                if qid in q_by_id:
                    ctx.trajectories.put(q_by_id[qid], t)  # s3 variants still to run get the very same episodes
            bar.update(sum(q.id in done for q in qs))
        todo = [q for q in qs if q.id not in done]
        ctx.upcoming = todo
        for batch in _chunks(todo, batch_size):
            before = (recall_hits, mc_hits, *(getattr(res, n) for n in _COUNTERS))
            n_traj = len(outcome.trajectories)
            outs = spec.fn(batch, ctx)
            if len(outs) != len(batch):
                raise ValueError(f"method {method!r} returned {len(outs)} outputs for {len(batch)} questions")
            to_answer = [i for i, o in enumerate(outs) if o.answer is None]
            preds: list[str] = [o.answer or "" for o in outs]
            if to_answer:
                generated = answer([(batch[i].question, outs[i].docs) for i in to_answer])
                for i, p in zip(to_answer, generated):
                    preds[i] = p
            scores = score_answers([(q.question, p, q.golden_answers) for q, p in zip(batch, preds)], judge,
                                   judge_mode=judge_mode, mc=mc)
            res.judge_calls += sum(sc.judge is not None for sc in scores)
            rows: list[Prediction] = []
            for q, o, p, sc in zip(batch, outs, preds, scores):
                d = o.docs
                golds = list(q.golden_answers)
                mcg = metrics.mc_gold(q.question, golds) if sc.mc else None
                look_for = [mcg[0][mcg[1]]] if mcg is not None else golds  # MC: the gold option's text
                in_docs = metrics.answer_in_docs(look_for, [f"{x.title}\n{x.text}" for x in d]) if d else False
                recall_hits += int(in_docs)
                if not sc.mc:
                    empty = metrics.empty_golds(golds)
                    res.empty_golds += empty
                    res.unmatchable += int(empty == len(golds))
                rows.append(Prediction(
                    dataset=dataset, id=q.id, question=q.question, golden_answers=golds, prediction=p,
                    doc_ids=[x.id for x in d], em=sc.em, f1=sc.f1, span=sc.span, judge=sc.judge, genacc=sc.genacc,
                    answer_in_docs=in_docs, answered_by="generator" if o.answer is None else "method",
                    extra=dict(o.extra), choice=sc.choice if sc.mc else None,
                ))
                if sc.mc:
                    res.mc += 1
                    mc_hits += int(sc.span)
                if o.trajectory is not None:
                    outcome.trajectories.append((dataset, q.id, o.trajectory, [x.id for x in d]))
            outcome.predictions.extend(rows)
            if progress is not None:
                after = (recall_hits, mc_hits, *(getattr(res, n) for n in _COUNTERS))
                progress.append(dataset, [asdict(r) for r in rows],
                                [(qid, t, ids) for _, qid, t, ids in outcome.trajectories[n_traj:]],
                                dict(zip(("recall_hits", "mc_hits", *_COUNTERS), (a - b for a, b in zip(after, before)))))
            bar.update(len(batch))
        if done:  # resumed rows first, new ones after: back to question order
            pos = {q.id: i for i, q in enumerate(qs)}
            outcome.predictions[first:] = sorted(outcome.predictions[first:], key=lambda p: pos.get(p.id, len(pos)))
            outcome.trajectories[first_traj:] = sorted(outcome.trajectories[first_traj:],
                                                       key=lambda t: pos.get(t[1], len(pos)))
        ds_rows = [p for p in outcome.predictions if p.dataset == dataset]
        n = len(ds_rows)
        res.n = n
        if n:
            res.genacc = sum(p.genacc for p in ds_rows) / n
            res.em = sum(p.em for p in ds_rows) / n
            res.f1 = sum(p.f1 for p in ds_rows) / n
            res.span = sum(p.span for p in ds_rows) / n
            res.answer_recall_at_k = recall_hits / n if spec.uses_docs else None
        if res.mc:
            res.mc_accuracy = mc_hits / res.mc
        outcome.datasets[dataset] = res
    bar.close()
    outcome.seconds = time.perf_counter() - start
    return outcome
