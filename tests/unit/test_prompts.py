"""Generator prompts, answer post-processing and the answer / judge helpers (no model)."""

from __future__ import annotations

from typing import Sequence

from s3core.generation import PROMPT_VERSION
from s3core.generation.base import Completion, Generator, Message, Usage, cut_at_stop
from s3core.generation.engine import JUDGE_RETRY_TEXT, answer, judge
from s3core.generation.prompts import (
    answer_messages,
    format_context,
    format_doc,
    judge_messages,
    postprocess_answer,
)
from s3core.types import Doc

DOCS = [
    Doc("17", "Mercury (planet)", "Mercury is the smallest planet.\nIt orbits the Sun.", 3.0),
    Doc("4", "Paris", "Paris is the capital of France."),
    Doc("99", "", "A doc without a title."),
]


def test_prompt_version() -> None:
    assert PROMPT_VERSION == "s3-gen-v1"


def test_format_context_renumbers_from_one() -> None:
    ctx = format_context(DOCS)
    lines = ctx.split("\n")
    assert lines == [
        "Doc 1 (Title: Mercury (planet)) Mercury is the smallest planet. It orbits the Sun.",
        "Doc 2 (Title: Paris) Paris is the capital of France.",
        "Doc 3 (Title: ) A doc without a title.",
    ]
    # numbering follows the order given, never the doc ids
    assert format_context(DOCS[1:2]) == "Doc 1 (Title: Paris) Paris is the capital of France."
    assert format_doc(5, DOCS[1]).startswith("Doc 5 (Title: Paris) ")
    assert format_context([]) == ""


def test_answer_messages_with_docs_and_closed_book() -> None:
    q = "What is the capital of France?"
    with_docs = answer_messages(q, DOCS)
    closed = answer_messages(q, [])
    for msgs in (with_docs, closed):
        assert [m["role"] for m in msgs] == ["system", "user"]
        assert q in msgs[-1]["content"]
        assert "few words" in msgs[-1]["content"] or "1 to 5 words" in msgs[-1]["content"]
    assert "Doc 2 (Title: Paris) Paris is the capital of France." in with_docs[-1]["content"]
    assert "Doc 1" not in closed[-1]["content"]
    assert "ocument" not in closed[-1]["content"]
    assert with_docs != closed
    # the question is stripped but otherwise kept verbatim, after the documents
    content = answer_messages(f"  {q}  ", DOCS)[-1]["content"]
    assert content.index("Doc 3") < content.index(f"Question: {q}\n")


def test_judge_messages_contain_golds_and_response() -> None:
    msgs = judge_messages("Who wrote Hamlet?", "It was Shakespeare,\nsurely", ["William Shakespeare", "Shakespeare"])
    text = "\n".join(m["content"] for m in msgs)
    assert "Who wrote Hamlet?" in text
    assert "William Shakespeare" in text and "Shakespeare" in text
    assert "It was Shakespeare, surely" in text  # response kept on one line
    assert "yes or no" in msgs[-1]["content"]


def test_postprocess_answer() -> None:
    assert postprocess_answer("  Paris  ") == "Paris"
    assert postprocess_answer("Paris\nParis is the capital of France.") == "Paris"
    assert postprocess_answer("Answer: Paris") == "Paris"
    assert postprocess_answer("answer:Paris\nmore") == "Paris"
    assert postprocess_answer("ANSWER:\n Paris\n") == "Paris"
    assert postprocess_answer("\n\n  Lyon, France \n") == "Lyon, France"
    assert postprocess_answer("The answer is Paris") == "The answer is Paris"
    assert postprocess_answer("") == ""
    assert postprocess_answer("Answer:") == ""


def test_cut_at_stop() -> None:
    assert cut_at_stop("a</query>b<x>", ["<x>", "</query>"]) == ("a", True)
    assert cut_at_stop("abc", ["zz", ""]) == ("abc", False)
    assert cut_at_stop("abc", None) == ("abc", False)


class ScriptedGenerator(Generator):
    """Returns scripted replies in order and records what it was asked."""

    backend = "fake"

    def __init__(self, replies: list[str]) -> None:
        super().__init__()
        self.name = "fake"
        self.replies = list(replies)
        self.calls: list[list[list[Message]]] = []

    def generate(self, conversations: Sequence[Sequence[Message]], max_new_tokens: int,
                 temperature: float = 0.0, stop: Sequence[str] | None = None) -> Completion:
        self.calls.append([list(c) for c in conversations])
        texts = [self.replies.pop(0) for _ in conversations]
        return Completion(texts, Usage(prompt_tokens=10 * len(texts), completion_tokens=2 * len(texts)))


def test_answer_postprocesses_and_counts_usage() -> None:
    gen = ScriptedGenerator(["Answer: Paris\nbecause...", "  Lyon "])
    usage = Usage()
    out = answer(gen, [("capital of France?", DOCS), ("second city?", [])], 32, usage=usage)
    assert out == ["Paris", "Lyon"]
    assert usage == Usage(20, 4)
    assert "Doc 1" in gen.calls[0][0][-1]["content"] and "Doc 1" not in gen.calls[0][1][-1]["content"]
    assert answer(gen, [], 32) == []


def test_judge_verdicts_retry_and_empty_response() -> None:
    # first call: q1, q2, q4, q5; second call (retries): q4, q5
    gen = ScriptedGenerator(["Yes.", "No, it is not.", "hmm", "maybe", "yes", "???"])
    items = [
        ("q1", "Paris", ["Paris"]),
        ("q2", "Lyon", ["Paris"]),
        ("q3", "", ["Paris"]),  # empty response: False, no model call
        ("q4", "Berlin", ["Paris"]),  # "hmm" -> retry -> "yes"
        ("q5", "Rome", ["Paris"]),  # "maybe" -> retry -> "???" -> False
    ]
    usage = Usage()
    out = judge(gen, items, 8, usage=usage)
    assert [v for v, _ in out] == [True, False, False, True, False]
    assert out[0][1] == "Yes." and out[2] == (False, "")
    assert "[retry] yes" in out[3][1] and "hmm" in out[3][1]
    assert "[retry] ???" in out[4][1]
    assert len(gen.calls) == 2 and len(gen.calls[0]) == 4 and len(gen.calls[1]) == 2
    retry_conv = gen.calls[1][0]
    assert retry_conv[-2] == {"role": "assistant", "content": "hmm"}
    assert retry_conv[-1] == {"role": "user", "content": JUDGE_RETRY_TEXT}
    assert usage == Usage(60, 12)
