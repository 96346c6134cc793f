"""The retriever interface every backend implements (spec §1: ``R(query, k) -> [Doc]``, ranked)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from s3core.errors import InvalidArgument
from s3core.types import Doc


@dataclass(frozen=True)
class IndexInfo:
    """What a loaded index is: the manifest's identity fields."""

    name: str
    backend: str  # "bm25" or "dense"
    num_documents: int
    corpus_sha256: str
    encoder: str = ""  # dense only
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Retriever(abc.ABC):
    """A loaded index.  Implementations must be safe to call from several threads at once."""

    @abc.abstractmethod
    def search(self, queries: Sequence[str], k: int) -> list[list[Doc]]:
        """One ranked list per query (best first, ``Doc.score`` set, scores non-increasing).

        ``k`` larger than the corpus is clamped to the corpus size; ``k < 1`` raises
        :class:`~s3core.errors.InvalidArgument`.  An empty query list gives an empty result.
        """

    @abc.abstractmethod
    def get(self, ids: Sequence[str]) -> list[Doc]:
        """Documents by id, in the order asked (score 0).  Unknown ids raise ``NotFound``."""

    @abc.abstractmethod
    def info(self) -> IndexInfo:
        """Name, backend, size, corpus hash, encoder and build parameters."""

    def close(self) -> None:
        """Release files / memory maps (optional)."""


def check_k(k: int) -> int:
    """Validate ``k`` (an int >= 1) and return it."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidArgument(f"k must be an integer, got {k!r}")
    if k < 1:
        raise InvalidArgument(f"k must be >= 1, got {k}")
    return k


def check_queries(queries: Sequence[str]) -> list[str]:
    """Validate that ``queries`` is a sequence of strings and return it as a list."""
    if isinstance(queries, str):
        raise InvalidArgument("queries must be a list of strings, not a single string")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str):
            raise InvalidArgument(f"queries[{i}] must be a string, got {type(q).__name__}")
    return out
