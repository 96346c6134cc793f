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
# Tuned on SmolLM2-135M-Instruct over PopQA questions with their gold passages: an explicit word
# budget ("1 to 5 words") repeated at the end of the user turn gave the shortest answers and the best
# span match of the variants tried (longer instructions, few-shot demonstrations, "copy from the
# documents" wording all made this small model ramble more).

_ANSWER_SYSTEM = "Be concise."
_ANSWER_USER = (
    "Answer the question in 1 to 5 words, using the documents.\n\n"
    "Documents:\n{context}\n\n"
    "Question: {question}\n"
    "Answer (1-5 words):"
)

_CLOSED_SYSTEM = "Be concise."
_CLOSED_USER = "Answer the question in 1 to 5 words.\n\nQuestion: {question}\nAnswer (1-5 words):"

# --- judging -------------------------------------------------------------------------------------
# With SmolLM2-135M no wording tried judged better than chance on the cases that reach the judge
# (span match already failed): "is it correct?"-style prompts say yes to almost everything, which
# would inflate GenAcc.  This wording is the conservative one (it rarely says yes); use
# ``generator.judge: none`` with the embedded model and a real judge model otherwise.
_JUDGE_SYSTEM = "Be concise."
_JUDGE_USER = (
    "Question: {question}\n"
    "Reference answer: {golds}\n"
    "Candidate answer: {response}\n\n"
    "Does the candidate answer contain the reference answer or mean the same as it? Reply yes or no."
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
    gold_text = " or ".join(_one_line(g) for g in golds if g.strip())
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
    """Strip, drop a leading ``Answer:``, keep the first line."""
    s = text.strip()
    if s[:7].lower() == "answer:":
        s = s[7:].strip()
    return s.splitlines()[0].strip() if s else ""
