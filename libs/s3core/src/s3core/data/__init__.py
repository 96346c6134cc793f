"""Data loading (FlashRAG questions, wiki-18 / DPR corpora) and the synthetic fictional-world generator."""

from typing import TYPE_CHECKING

from s3core.data.io import (
    corpus_sha256,
    dataset_name,
    iter_corpus,
    load_corpus,
    load_questions,
    parse_contents,
)

if TYPE_CHECKING:
    from s3core.data.synth import synthesize

__all__ = [
    "corpus_sha256",
    "dataset_name",
    "iter_corpus",
    "load_corpus",
    "load_questions",
    "parse_contents",
    "synthesize",
]


def __getattr__(name: str) -> object:
    # synth is imported lazily so that loading data does not build the generator's tables.
    if name == "synthesize":
        from s3core.data.synth import synthesize

        return synthesize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
