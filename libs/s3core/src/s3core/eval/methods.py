"""Evaluation methods: each maps a batch of questions to the documents handed to the generator.

Registered by name; later issues add ``s3`` and the baselines (IRCoT, Search-R1-style, ...).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from s3core.errors import InvalidArgument
from s3core.types import Doc, Question


class SearchFn(Protocol):
    def __call__(self, queries: Sequence[str], k: int) -> list[list[Doc]]: ...


# A method takes (questions, search, k) and returns the docs for each question.
Method = Callable[[Sequence[Question], SearchFn | None, int], list[list[Doc]]]
METHODS: dict[str, Method] = {}
NEEDS_RETRIEVER: dict[str, bool] = {}


def register_method(name: str, needs_retriever: bool) -> Callable[[Method], Method]:
    def deco(fn: Method) -> Method:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = fn
        NEEDS_RETRIEVER[name] = needs_retriever
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InvalidArgument(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


@register_method("no-retrieval", needs_retriever=False)
def no_retrieval(questions: Sequence[Question], search: SearchFn | None, k: int) -> list[list[Doc]]:
    """Closed book: the generator answers from its own knowledge."""
    return [[] for _ in questions]


@register_method("naive-rag", needs_retriever=True)
def naive_rag(questions: Sequence[Question], search: SearchFn | None, k: int) -> list[list[Doc]]:
    """Top-k documents for the raw question (the GBR baseline's context)."""
    assert search is not None
    return search([q.question for q in questions], k)
