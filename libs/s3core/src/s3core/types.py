"""Plain domain types shared by every module (no gRPC, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Doc:
    """One retrievable passage.  ``score`` is set when it comes out of a retriever."""

    id: str
    title: str
    text: str
    score: float = 0.0

    @property
    def contents(self) -> str:
        """wiki-18 / DPR layout: the title on the first line, then the body."""
        return f'"{self.title}"\n{self.text}'


@dataclass(frozen=True)
class Question:
    """One QA item in FlashRAG format."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    dataset: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
