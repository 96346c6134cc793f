"""Naive-RAG baseline precomputation (``s3 precompute``) and the training-set filter (spec §5).

``precompute`` looks every question's baseline up in the cache first and computes only the misses,
batch by batch: retrieve top-``k`` for the raw question → ``Generator.Answer`` → span / EM / F1 →
``Generator.Judge`` where span match failed (when judging is on).  Each batch is written to Redis as
soon as it is scored, in one ``MULTI``/``EXEC``, so an interrupted run (Ctrl-C, kill, a dead service)
loses at most the batch in flight, and a second run only fills what is missing.

``filter_training_set`` keeps the questions the naive RAG gets wrong and whose golds are not
yes/no/true/false, and writes them as a FlashRAG jsonl file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tqdm.auto import tqdm

from s3core import metrics
from s3core.cache.baseline import BaselineCache, BaselineRecord
from s3core.cache.keys import BaselineKey, KeyFn, baseline_dataset, index_fingerprint, judge_id, key_factory
from s3core.errors import InvalidArgument, NotFound, S3Error
from s3core.eval.scoring import score_answers
from s3core.io import write_jsonl
from s3core.reward import MissingBaseline
from s3core.types import Question

logger = logging.getLogger(__name__)

__all__ = [
    "YES_NO_ANSWERS",
    "BaselineSetup",
    "DatasetPrecompute",
    "FilterSummary",
    "PrecomputeSummary",
    "compute_baselines",
    "filter_training_set",
    "make_compute_fn",
    "precompute",
    "resolve_setup",
]

YES_NO_ANSWERS = frozenset({"yes", "no", "true", "false"})


# --- what a baseline is computed with -------------------------------------------------------------

@dataclass(frozen=True)
class BaselineSetup:
    """The fixed parts of every baseline key of a run, resolved from the live services."""

    index: str  # retriever index name the searches go to
    index_fingerprint: str
    k: int
    generator_model: str  # "<backend>/<model>"
    prompt_version: str
    judge: bool
    judge_id: str

    def key_fn(self) -> KeyFn:
        return key_factory(self.index_fingerprint, self.k, self.generator_model, self.prompt_version, self.judge_id)


def resolve_setup(retriever_client: Any, generator_client: Any, k: int, judge: bool, index: str = "") -> BaselineSetup:
    """Ask the retriever (``ListIndexes``) and the generator (``ModelInfo``) what they serve.

    ``index`` empty = the retriever's default index.  Unknown index → NotFound.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"k must be an integer >= 1, got {k!r}")
    listing = retriever_client.list_indexes()
    name = index or listing.default_index
    infos = {i.name: i for i in listing.indexes}
    if name not in infos:
        raise NotFound(f"retriever has no index {name!r} (loaded: {', '.join(infos) or 'none'})")
    info = generator_client.model_info()
    if not info.model or not info.prompt_version:
        raise S3Error("generator did not report its model id and prompt version (ModelInfo); "
                      "refusing to key baselines without them")
    model = f"{info.backend}/{info.model}" if info.backend else info.model
    return BaselineSetup(index=name, index_fingerprint=index_fingerprint(infos[name]), k=k, generator_model=model,
                         prompt_version=info.prompt_version, judge=judge, judge_id=judge_id(judge, model))


# --- computing baselines --------------------------------------------------------------------------

def compute_baselines(questions: Sequence[Question], retriever_client: Any, generator_client: Any,
                      setup: BaselineSetup) -> list[BaselineRecord]:
    """Naive RAG for one batch: search → Answer → span/EM/F1 → Judge where span failed."""
    if not questions:
        return []
    docs = retriever_client.search([q.question for q in questions], setup.k, index=setup.index)
    resp = generator_client.answer([(q.question, d) for q, d in zip(questions, docs)])
    answers = list(resp.answers)
    if len(answers) != len(questions):
        raise S3Error(f"generator returned {len(answers)} answers for {len(questions)} questions")
    # the generator reports its prompt version on every answer: a swap mid-run must not be cached
    if resp.prompt_version and resp.prompt_version != setup.prompt_version:
        raise S3Error(f"generator prompt version changed during the run ({setup.prompt_version!r} → "
                      f"{resp.prompt_version!r}); rerun to key baselines correctly")
    if resp.model and not setup.generator_model.endswith(resp.model):
        raise S3Error(f"generator model changed during the run ({setup.generator_model!r} → {resp.model!r})")

    def judge(items: Sequence[tuple[str, str, Sequence[str]]]) -> list[bool]:
        return list(generator_client.judge(items).correct)

    scores = score_answers([(q.question, a, q.golden_answers) for q, a in zip(questions, answers)],
                           judge if setup.judge else None)
    return [
        BaselineRecord(question_id=q.id, answer=a, genacc=sc.genacc, em=sc.em, f1=sc.f1, span=sc.span,
                       judge=sc.judge, doc_ids=tuple(x.id for x in d))
        for q, d, a, sc in zip(questions, docs, answers, scores)
    ]


def make_compute_fn(retriever_client: Any, generator_client: Any, setup: BaselineSetup,
                    batch_size: int = 8) -> Callable[[Sequence[Question]], list[BaselineRecord]]:
    """A ``compute`` callback for :class:`s3core.reward.RewardComputer` (on_missing="compute")."""

    def compute(questions: Sequence[Question]) -> list[BaselineRecord]:
        out: list[BaselineRecord] = []
        for i in range(0, len(questions), batch_size):
            out += compute_baselines(questions[i : i + batch_size], retriever_client, generator_client, setup)
        return out

    return compute


# --- precompute -----------------------------------------------------------------------------------

@dataclass
class DatasetPrecompute:
    n: int = 0
    hits: int = 0
    misses: int = 0
    written: int = 0
    genacc: float = 0.0
    em: float = 0.0
    f1: float = 0.0


@dataclass
class PrecomputeSummary:
    """``hits`` / ``misses`` count questions; ``written`` counts baselines stored (questions that
    normalise to the same text in one dataset share one).  ``genacc`` / ``em`` / ``f1`` are the
    average over datasets of the per-dataset means (as the paper's Table 1 averages)."""

    hits: int = 0
    misses: int = 0
    written: int = 0
    genacc: float = 0.0
    em: float = 0.0
    f1: float = 0.0
    per_dataset: dict[str, DatasetPrecompute] = field(default_factory=dict)
    setup: BaselineSetup | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


OnBatch = Callable[[str, int], None]  # (dataset, baselines written so far in this run)


def precompute(
    questions_by_dataset: Mapping[str, Sequence[Question]],
    retriever_client: Any,
    generator_client: Any,
    cache: BaselineCache,
    k: int = 3,
    judge: bool = True,
    batch_size: int = 8,
    show_progress: bool = True,
    *,
    index: str = "",
    setup: BaselineSetup | None = None,
    on_batch: OnBatch | None = None,
) -> PrecomputeSummary:
    """Fill the baseline cache for every question; returns hits / misses / written and accuracy.

    ``setup`` (from :func:`resolve_setup`) is resolved from the services when not given.
    ``on_batch(dataset, written_so_far)`` runs after each batch is stored (progress hooks, tests).
    """
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    if setup is None:
        setup = resolve_setup(retriever_client, generator_client, k, judge, index)
    elif setup.k != k or setup.judge != judge:
        raise InvalidArgument(f"setup (k={setup.k}, judge={setup.judge}) disagrees with k={k}, judge={judge}")
    key_fn = setup.key_fn()
    summary = PrecomputeSummary(setup=setup)
    total = sum(len(v) for v in questions_by_dataset.values())
    bar = tqdm(total=total, desc="precompute", unit="q", disable=not show_progress)
    try:
        for ds, raw_qs in questions_by_dataset.items():
            qs = [q if q.dataset else replace(q, dataset=ds) for q in raw_qs]
            res = DatasetPrecompute(n=len(qs))
            summary.per_dataset[ds] = res
            keys = [key_fn(q) for q in qs]
            found: list[BaselineRecord | None] = cache.get_many(keys)
            res.hits = sum(r is not None for r in found)
            res.misses = len(qs) - res.hits
            summary.hits += res.hits
            summary.misses += res.misses
            bar.update(res.hits)
            bar.set_postfix(hits=summary.hits, misses=summary.misses)
            # one computation per distinct key
            todo: dict[str, int] = {}
            for i, r in enumerate(found):
                if r is None:
                    todo.setdefault(keys[i].digest(), i)
            waiting: dict[str, list[int]] = {}
            for i, r in enumerate(found):
                if r is None:
                    waiting.setdefault(keys[i].digest(), []).append(i)
            order = list(todo.values())
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                recs = compute_baselines([qs[i] for i in idx], retriever_client, generator_client, setup)
                n = cache.put_many([(keys[i], r) for i, r in zip(idx, recs)])
                res.written += n
                summary.written += n
                for i, r in zip(idx, recs):
                    for j in waiting[keys[i].digest()]:
                        found[j] = r
                bar.update(sum(len(waiting[keys[i].digest()]) for i in idx))
                if on_batch is not None:
                    on_batch(ds, summary.written)
            done = [r for r in found if r is not None]
            if done:
                res.genacc = sum(r.genacc for r in done) / len(done)
                res.em = sum(r.em for r in done) / len(done)
                res.f1 = sum(r.f1 for r in done) / len(done)
    finally:
        bar.close()
    rs = [r for r in summary.per_dataset.values() if r.n]
    if rs:
        summary.genacc = sum(r.genacc for r in rs) / len(rs)
        summary.em = sum(r.em for r in rs) / len(rs)
        summary.f1 = sum(r.f1 for r in rs) / len(rs)
    summary.seconds = time.perf_counter() - start
    logger.info("precompute: %d hits, %d misses, %d written in %.1f s", summary.hits, summary.misses,
                summary.written, summary.seconds)
    return summary


# --- training-set filter --------------------------------------------------------------------------

@dataclass
class FilterSummary:
    total: int = 0
    kept: int = 0
    dropped_rag_correct: int = 0  # naive RAG already answers it (cached GenAcc = 1)
    dropped_yes_no: int = 0  # some gold is yes / no / true / false
    renamed_ids: int = 0  # ids that collided across datasets, written as "<dataset>/<id>"
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_yes_no(golds: Sequence[str]) -> bool:
    return any(metrics.normalize_answer(g) in YES_NO_ANSWERS for g in golds)


def filter_training_set(
    questions: Sequence[Question] | Mapping[str, Sequence[Question]],
    cache: BaselineCache,
    key_fn: KeyFn,
    out_path: str | os.PathLike[str],
) -> FilterSummary:
    """Write the questions worth training on to ``out_path`` (FlashRAG jsonl, atomically).

    Drops questions with any yes/no/true/false gold (checked first, no baseline needed) and
    questions whose cached naive-RAG GenAcc is 1.  A missing baseline raises
    :class:`~s3core.reward.MissingBaseline` (count and first ids) and writes nothing.  Each kept
    row's ``metadata.source_dataset`` records its dataset, so baselines are found again when the
    written file (whose name is a new dataset name) is loaded for training.
    """
    if isinstance(questions, Mapping):
        flat = [q if q.dataset else replace(q, dataset=ds) for ds, qs in questions.items() for q in qs]
    else:
        flat = list(questions)
    summary = FilterSummary(total=len(flat))

    def per(ds: str) -> dict[str, int]:
        return summary.per_dataset.setdefault(ds, {"total": 0, "kept": 0, "dropped_rag_correct": 0,
                                                   "dropped_yes_no": 0})

    candidates: list[Question] = []
    for q in flat:
        p = per(baseline_dataset(q))
        p["total"] += 1
        if is_yes_no(q.golden_answers):
            summary.dropped_yes_no += 1
            p["dropped_yes_no"] += 1
        else:
            candidates.append(q)
    keys: list[BaselineKey] = [key_fn(q) for q in candidates]
    found = cache.get_many(keys)
    missing = [q.id for q, r in zip(candidates, found) if r is None]
    if missing:
        raise MissingBaseline.for_ids(missing, "run `s3 precompute` with the same retriever, k, generator and "
                                               "judge first")
    kept: list[Question] = []
    for q, r in zip(candidates, found):
        assert r is not None
        p = per(baseline_dataset(q))
        if r.genacc:
            summary.dropped_rag_correct += 1
            p["dropped_rag_correct"] += 1
        else:
            kept.append(q)
            p["kept"] += 1
    summary.kept = len(kept)

    counts: dict[str, int] = {}
    for q in kept:
        counts[q.id] = counts.get(q.id, 0) + 1
    rows = []
    for q in kept:
        ds = baseline_dataset(q)
        meta = {**(q.metadata or {}), "source_dataset": ds}
        qid = q.id
        if counts[q.id] > 1:
            meta["source_id"] = q.id
            qid = f"{ds}/{q.id}"
            summary.renamed_ids += 1
        rows.append({"id": qid, "question": q.question, "golden_answers": list(q.golden_answers), "metadata": meta})
    write_jsonl(out_path, rows)
    return summary
