"""Keys of the naive-RAG baseline cache (spec §5).

A baseline is the GenAcc of the generator given the naive top-``k`` documents for the raw question.
It depends on the dataset, the question, the retriever's index, ``k``, the generator model, its
prompt templates, the judge and the scoring rule (:data:`SCORING_VERSION`) — every one of them is
part of the key, so changing any part can never return a stale baseline.

The Redis key is ``<namespace>:baseline:v1:<sha256>`` where the digest is taken over a canonical
JSON document (sorted keys, no whitespace, ASCII escapes) of the key fields with the question
normalised by :func:`s3core.metrics.normalize_answer`.  Only ``hashlib`` and ``json`` are involved,
so the key is the same in every process, on every machine and in every Python version (never the
salted builtin ``hash()``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from s3core.errors import InvalidArgument
from s3core.metrics import normalize_answer
from s3core.types import Question

__all__ = [
    "KEY_VERSION",
    "LEGACY_SCORING_VERSION",
    "SCORING_VERSION",
    "BaselineKey",
    "KeyFn",
    "SPAN_ONLY_JUDGE",
    "baseline_dataset",
    "canonical_json",
    "index_fingerprint",
    "judge_id",
    "key_factory",
]

KEY_VERSION = "v1"
#: The rule that turned a generator's answer into GenAcc / EM / F1 / span (``s3core.metrics``,
#: ``s3core.eval.scoring``).  Bump it whenever that rule changes what a row scores; every baseline
#: scored under another version then misses (is recomputed) instead of being reused.
#: ``1``: spec §4 as written (a gold that normalises to nothing matches everything; multiple-choice
#: golds span-matched as text) — also what a stored key without the field means.
#: ``2``: golds that normalise to nothing are unmatchable; multiple-choice rows are scored by the
#: option the prediction chose (``s3core.metrics.extract_choice``).
SCORING_VERSION = "2"
LEGACY_SCORING_VERSION = "1"
SPAN_ONLY_JUDGE = "span-only"
SOURCE_DATASET = "source_dataset"  # metadata key carried by filtered training sets (see baseline_dataset)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no insignificant whitespace, non-ASCII escaped."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class BaselineKey:
    """Everything a naive-RAG baseline depends on.  ``question`` is kept raw (readable in exports);
    the digest uses its normalised form, so case / punctuation / article / whitespace variants of a
    question share one baseline."""

    dataset: str
    question: str
    index_fingerprint: str
    k: int
    generator_model: str
    prompt_version: str
    judge_id: str
    scoring_version: str = SCORING_VERSION

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "k":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise InvalidArgument(f"baseline key: k must be an integer >= 1, got {v!r}")
            elif not isinstance(v, str):
                raise InvalidArgument(f"baseline key: {f.name} must be a string, got {type(v).__name__}")
            elif f.name != "question" and not v.strip():
                # an empty model / prompt version / index id would let unrelated baselines collide
                raise InvalidArgument(f"baseline key: {f.name} must not be empty")

    def canonical_fields(self) -> dict[str, Any]:
        """The fields the digest is taken over (question normalised)."""
        d = asdict(self)
        d["question"] = normalize_answer(self.question)
        d["key_version"] = KEY_VERSION
        return d

    def digest(self) -> str:
        return _sha256(canonical_json(self.canonical_fields()))

    def redis_key(self, namespace: str = "s3") -> str:
        return f"{namespace}:baseline:{KEY_VERSION}:{self.digest()}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "BaselineKey":
        """Build from a dict (an export record's ``key``); raises InvalidArgument when malformed.
        A key written before the scoring version was recorded gets :data:`LEGACY_SCORING_VERSION`
        (so it is kept, exported and counted, but never matches a key of today's scoring)."""
        if not isinstance(d, dict):
            raise InvalidArgument(f"baseline key must be an object, got {type(d).__name__}")
        if "scoring_version" not in d:
            d = {**d, "scoring_version": LEGACY_SCORING_VERSION}
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise InvalidArgument(f"baseline key misses field(s) {', '.join(missing)}")
        extra = sorted(set(d) - set(names))
        if extra:
            raise InvalidArgument(f"baseline key has unknown field(s) {', '.join(extra)}")
        return cls(**{n: d[n] for n in names})


def _get(info: Any, name: str, default: Any = "") -> Any:
    if isinstance(info, dict):
        return info.get(name, default)
    return getattr(info, name, default)


def index_fingerprint(info: Any) -> str:
    """A digest of what makes an index return what it returns.

    ``info`` is the retriever's ``s3.v1.IndexInfo`` (``params_json``), an
    :class:`s3core.retrieval.base.IndexInfo` (``params``) or a manifest dict (``params``).  Taken over
    backend, corpus sha256, document count, encoder and the build parameters (re-serialised
    canonically, so key order in ``params_json`` does not matter).  The index *name* is left out: a
    renamed copy of the same index gives the same documents.
    """
    params_json = _get(info, "params_json", None)
    if params_json is not None and not isinstance(params_json, dict):
        try:
            params = json.loads(params_json) if params_json else {}
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"index info: params_json is not valid JSON: {exc}") from None
    else:
        params = _get(info, "params", None) or {}
    if not isinstance(params, dict):
        raise InvalidArgument(f"index info: params must be an object, got {type(params).__name__}")
    backend = str(_get(info, "backend", "") or "")
    corpus = str(_get(info, "corpus_sha256", "") or "")
    if not backend or not corpus:
        raise InvalidArgument("index info: backend and corpus_sha256 are required for a baseline key")
    doc = {
        "backend": backend,
        "corpus_sha256": corpus,
        "num_documents": int(_get(info, "num_documents", 0) or 0),
        "encoder": str(_get(info, "encoder", "") or ""),
        "params": params,
    }
    return f"{backend}-{_sha256(canonical_json(doc))[:32]}"


def judge_id(judge: bool, model: str = "") -> str:
    """The judge part of a key: ``span-only`` without a judge, else ``llm:<model>``."""
    if not judge:
        return SPAN_ONLY_JUDGE
    if not model:
        raise InvalidArgument("judge_id: a judged baseline needs the judge model id")
    return f"llm:{model}"


def baseline_dataset(q: Question, default: str = "") -> str:
    """The dataset a question's baseline is filed under.

    A filtered training set (``filter_training_set``) records the source dataset in
    ``metadata["source_dataset"]``, because once it is written to a new file its name no longer
    says which dataset each question came from.
    """
    src = q.metadata.get(SOURCE_DATASET) if isinstance(q.metadata, dict) else None
    return str(src or q.dataset or default)


KeyFn = Callable[[Question], BaselineKey]


def key_factory(index_fp: str, k: int, generator_model: str, prompt_version: str, judge: str,
                scoring_version: str = SCORING_VERSION) -> KeyFn:
    """``question -> BaselineKey`` with every part but the question fixed (the scoring rule: today's)."""

    def make(q: Question) -> BaselineKey:
        ds = baseline_dataset(q)
        if not ds:
            raise InvalidArgument(f"question {q.id!r} has no dataset; baselines are filed per dataset")
        return BaselineKey(dataset=ds, question=q.question, index_fingerprint=index_fp, k=k,
                           generator_model=generator_model, prompt_version=prompt_version, judge_id=judge,
                           scoring_version=scoring_version)

    return make
