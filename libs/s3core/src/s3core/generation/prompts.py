"""The generator's and the judge's prompts (spec §1, §3, §4).

Our own wording.  ``PROMPT_VERSION`` names this exact set of templates and is part of every
baseline-cache key: change any text below and bump it, or cached naive-RAG accuracies become stale.
"""

from __future__ import annotations

from typing import Sequence

from s3core.types import Doc

__all__ = [
    "PROMPT_VERSION",
    "answer_messages",
    "answer_messages_for_context",
    "format_context",
    "format_doc",
    "judge_messages",
    "postprocess_answer",
]

PROMPT_VERSION = "s3-gen-v1"

# --- answering -----------------------------------------------------------------------------------
# Tuned on SmolLM2-135M-Instruct (see the generation README notes in the report): a system line that
# says "copy the answer" plus a user turn that ends with "Answer:" gave the shortest, most extractive
# answers.  Larger models follow it just as well.

_ANSWER_SYSTEM = (
    "You answer questions using the documents given. "
    "Reply with the answer only: a few words copied from the documents. No explanation, no full sentence."
)
_ANSWER_USER = "{context}\n\nQuestion: {question}\nAnswer in a few words."

_CLOSED_SYSTEM = "You answer questions. Reply with the answer only: a few words. No explanation, no full sentence."
_CLOSED_USER = "Question: {question}\nAnswer in a few words."

# --- judging -------------------------------------------------------------------------------------
_JUDGE_SYSTEM = "You check answers to questions. Reply with one word: yes or no."
_JUDGE_USER = (
    "Question: {question}\n"
    "Correct answers: {golds}\n"
    "Response: {response}\n\n"
    "Does the response contain one of the correct answers, or say the same thing in other words? "
    "Reply yes or no."
)


def _one_line(s: str) -> str:
    return " ".join(s.split())


def format_doc(n: int, doc: Doc) -> str:
    """``Doc n (Title: ...) text`` (spec §3 step 4)."""
    return f"Doc {n} (Title: {_one_line(doc.title)}) {_one_line(doc.text)}"


def format_context(docs: Sequence[Doc]) -> str:
    """Number the docs from 1 in the order given, one per line."""
    return "\n".join(format_doc(i, d) for i, d in enumerate(docs, start=1))


def answer_messages_for_context(question: str, context: str) -> list[dict[str, str]]:
    """Chat messages that ask for a short answer from an already formatted ``context``.

    An empty (or blank) context gives the closed-book variant.
    """
    q = question.strip()
    if not context.strip():
        return [
            {"role": "system", "content": _CLOSED_SYSTEM},
            {"role": "user", "content": _CLOSED_USER.format(question=q)},
        ]
    return [
        {"role": "system", "content": _ANSWER_SYSTEM},
        {"role": "user", "content": _ANSWER_USER.format(context=context, question=q)},
    ]


def answer_messages(question: str, docs: Sequence[Doc]) -> list[dict[str, str]]:
    """Chat messages that ask for a short answer; closed book when ``docs`` is empty."""
    return answer_messages_for_context(question, format_context(docs))


def judge_messages(question: str, response: str, golds: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking whether ``response`` contains (or is equivalent to) any gold answer."""
    gold_text = " | ".join(_one_line(g) for g in golds)
    return [
        {"role": "system", "content": _JUDGE_SYSTEM},
        {
            "role": "user",
            "content": _JUDGE_USER.format(
                question=question.strip(), golds=gold_text, response=_one_line(response)
            ),
        },
    ]


def postprocess_answer(text: str) -> str:
    """Strip, keep the first line, drop a leading ``Answer:``."""
    s = text.strip()
    if not s:
        return ""
    s = s.splitlines()[0].strip()
    if s[:7].lower() == "answer:":
        s = s[7:].strip()
    return s
