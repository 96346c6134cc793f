"""The search agent as a service: one request, one greedy s3 episode, the context it gathered.

Shared by the searcher's two front doors, ``POST /search`` (JSON) and the gRPC ``Search`` RPC
(``s3.v1.SearchRequest``): both turn their input into the same fields and go through
:func:`parse_search`, so a bad request gets the same message naming the field either way
(HTTP 400 / ``INVALID_ARGUMENT``), and both shape their answer from :func:`search_result`.

Fields of a request:

* ``question`` (required): a non-empty string of at most :data:`MAX_QUESTION_CHARS` characters.
* ``preset`` (optional): a search preset of :data:`s3core.config.PRESETS` (``"8-3-3"``, ...): its
  ``search`` knobs replace the searcher's configured ones for this request.
* ``answer`` (optional, default false): also ask the generator for the answer from the gathered
  context (only on a searcher started with a generator).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from s3core.config import PRESETS, SearchConfig
from s3core.errors import InvalidArgument
from s3core.search.trajectory import Trajectory
from s3core.types import Doc, Question

__all__ = ["SEARCH_FIELDS", "MAX_QUESTION_CHARS", "SearchAsk", "search_presets", "parse_search", "search_result"]

SEARCH_FIELDS = ("question", "preset", "answer")
MAX_QUESTION_CHARS = 8192


@dataclass(frozen=True)
class SearchAsk:
    """A validated search request."""

    question: str
    cfg: SearchConfig  # the episode knobs: the searcher's, or those of the preset asked for
    preset: str | None
    answer: bool

    def as_question(self) -> Question:
        return Question(id="search-0", question=self.question, golden_answers=())


def search_presets() -> dict[str, dict[str, Any]]:
    """The presets that set search knobs, by name."""
    return {k: v["search"] for k, v in PRESETS.items() if isinstance(v.get("search"), dict)}


def parse_search(body: Any, defaults: SearchConfig, *, can_answer: bool) -> SearchAsk:
    """A :class:`SearchAsk` from a request body (a JSON object or the fields of the RPC's request);
    InvalidArgument naming the field when anything is wrong."""
    if not isinstance(body, Mapping):
        raise InvalidArgument('the body must be a JSON object: {"question": "...", "preset"?: "8-3-3", '
                              '"answer"?: false}')
    unknown = sorted(str(k) for k in set(body) - set(SEARCH_FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(SEARCH_FIELDS)})")
    question = body.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidArgument("question: a non-empty string is required")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidArgument(f"question is {len(question)} characters long (at most {MAX_QUESTION_CHARS})")
    cfg = defaults
    preset = body.get("preset")
    if preset is not None:
        known = search_presets()
        if not isinstance(preset, str) or preset not in known:
            raise InvalidArgument(f"preset: {preset!r} is not a search preset (known: {', '.join(known)})")
        cfg = dataclasses.replace(cfg, **known[preset])
    want_answer = body.get("answer", False)
    if not isinstance(want_answer, bool):
        raise InvalidArgument(f"answer: true or false, got {want_answer!r}")
    if want_answer and not can_answer:
        raise InvalidArgument("answer: this searcher has no generator to answer with (start it with --generator ADDR)")
    return SearchAsk(question, cfg, preset, want_answer)


def search_result(ask: SearchAsk, trajectory: Trajectory, version: int, seconds: float,
                  answer: str | None = None) -> dict[str, Any]:
    """What the searcher answers (the JSON body of ``POST /search``; the RPC's response has the same fields):
    the context documents (what the user's own LLM should read), the queries issued, the number of turns,
    the policy version that ran, the seconds the episode took, and ``answer`` when it was asked for."""
    docs: list[Doc] = list(trajectory.context)
    out: dict[str, Any] = {
        "question": ask.question,
        "context": [{"id": d.id, "title": d.title, "text": d.text} for d in docs],
        "queries": [b.query for b in trajectory.blocks if b.query],
        "turns": len(trajectory.turns),
        "policy_version": int(version),
        "seconds": round(float(seconds), 3),
    }
    if ask.answer:
        out["answer"] = "" if answer is None else str(answer)
    return out
