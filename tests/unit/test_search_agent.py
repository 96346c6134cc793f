"""s3core.search.agent: the request checks and the answer shape shared by POST /search and the Search RPC."""

from __future__ import annotations

import pytest

from s3core.config import PRESETS, SearchConfig
from s3core.errors import InvalidArgument
from s3core.search.agent import MAX_QUESTION_CHARS, parse_search, search_result
from s3core.search.trajectory import InfoBlock, Trajectory, Turn
from s3core.types import Doc, Question

DEFAULTS = SearchConfig(retrieve_k=2, max_turns=1)


def test_defaults_and_preset() -> None:
    ask = parse_search({"question": "who?"}, DEFAULTS, can_answer=False)
    assert ask.question == "who?" and ask.cfg == DEFAULTS and ask.preset is None and ask.answer is False
    ask = parse_search({"question": "who?", "preset": "8-3-3", "answer": True}, DEFAULTS, can_answer=True)
    want = PRESETS["8-3-3"]["search"]
    assert (ask.cfg.retrieve_k, ask.cfg.select_max, ask.cfg.max_turns) == (
        want["retrieve_k"], want["select_max"], want["max_turns"])
    assert ask.cfg.max_new_tokens == DEFAULTS.max_new_tokens  # knobs the preset does not set stay
    assert ask.answer is True and ask.preset == "8-3-3"


@pytest.mark.parametrize("body, can_answer, needle", [
    ([1, 2], False, "JSON object"),
    ({}, False, "question"),
    ({"question": "  "}, False, "question"),
    ({"question": 7}, False, "question"),
    ({"question": "x" * (MAX_QUESTION_CHARS + 1)}, False, "question is"),
    ({"question": "x", "preset": "9-9-9"}, False, "preset"),
    ({"question": "x", "preset": 3}, False, "preset"),
    ({"question": "x", "answer": "yes"}, True, "answer"),
    ({"question": "x", "answer": True}, False, "answer: this searcher has no generator"),
    ({"question": "x", "topk": 3}, False, "unknown field(s) topk"),
])
def test_bad_input_names_the_field(body: object, can_answer: bool, needle: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_search(body, DEFAULTS, can_answer=can_answer)
    assert needle in str(err.value)


def test_result_shape() -> None:
    q = Question(id="q", question="who?", golden_answers=())
    t = Trajectory(question=q, turns=[Turn(raw_text="...", query="who is x")],
                   blocks=[InfoBlock(index=0, query="", docs=[]), InfoBlock(index=1, query="who is x", docs=[])],
                   context=[Doc(id="d1", title="T", text="body")])
    ask = parse_search({"question": "who?"}, DEFAULTS, can_answer=False)
    out = search_result(ask, t, 4, 1.23456)
    assert out == {"question": "who?", "context": [{"id": "d1", "title": "T", "text": "body"}],
                   "queries": ["who is x"], "turns": 1, "policy_version": 4, "seconds": 1.235}
    ask = parse_search({"question": "who?", "answer": True}, DEFAULTS, can_answer=True)
    assert search_result(ask, t, 4, 0.0, "Paris")["answer"] == "Paris"
