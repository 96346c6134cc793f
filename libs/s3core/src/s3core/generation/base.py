"""The frozen-LLM interface every generator backend implements (no gRPC, no torch here)."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = ["BatchObserver", "Completion", "Generator", "Message", "Usage", "VALID_ROLES", "cut_at_stop"]

logger = logging.getLogger(__name__)

Message = dict[str, str]
VALID_ROLES = ("system", "user", "assistant")

# Called after every model batch: (batch_size, prompt_tokens, completion_tokens, seconds).
BatchObserver = Callable[[int, int, int, float], None]


@dataclass
class Usage:
    """Token usage; ``add`` accumulates (thread-safe enough: callers own their Usage objects)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "Usage") -> "Usage":
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        return self


@dataclass
class Completion:
    """What one :meth:`Generator.generate` call returns: one text per conversation, plus usage."""

    texts: list[str]
    usage: Usage = field(default_factory=Usage)


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns ``(text, was_cut)``."""
    if not stop:
        return text, False
    best = -1
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return (text[:best], True) if best >= 0 else (text, False)


class Generator(ABC):
    """A frozen chat LLM.

    Subclasses set ``name`` (the model identifier reported to callers and used in cache keys),
    ``backend`` ("hf", "openai", "vllm"), ``max_batch_size`` and ``max_prompt_tokens``, and
    implement :meth:`generate`.  Greedy decoding when ``temperature == 0``.
    """

    name: str = ""
    backend: str = ""
    max_batch_size: int = 8
    max_prompt_tokens: int = 3072

    def __init__(self) -> None:
        self.observers: list[BatchObserver] = []
        self._usage_lock = threading.Lock()
        self.last_usage = Usage()

    # --- the one method a backend must implement ---------------------------------------------
    @abstractmethod
    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        """One completion per conversation (same order), with the usage of this call."""

    # --- conveniences ------------------------------------------------------------------------
    def complete(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> list[str]:
        """Like :meth:`generate` but returns only the texts; usage goes to ``last_usage``.

        Under concurrent callers ``last_usage`` belongs to whichever call finished last; use
        :meth:`generate` when the usage must be exact.
        """
        out = self.generate(conversations, max_new_tokens, temperature, stop)
        with self._usage_lock:
            self.last_usage = out.usage
        return out.texts

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``.  Default: a rough 4-characters-per-token estimate."""
        return (len(text) + 3) // 4

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        """Keep the first ``max_tokens`` tokens of ``text``.  Default: by the 4-character estimate."""
        if max_tokens <= 0:
            return ""
        return text[: max_tokens * 4]

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of a whole chat prompt.  Default: contents plus a few tokens per message."""
        return sum(self.count_tokens(m.get("content", "")) + 4 for m in messages) + 2

    def notify(self, batch_size: int, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        """Tell the observers (metrics) about one finished model batch; never raises."""
        for obs in self.observers:
            try:
                obs(batch_size, prompt_tokens, completion_tokens, seconds)
            except Exception:  # noqa: BLE001 - metrics must never break generation
                logger.exception("generator batch observer failed")

    def close(self) -> None:
        """Release resources (threads, GPU memory).  Default: nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r})"
