"""Answering and judging on top of any :class:`~s3core.generation.base.Generator` (spec §1, §4)."""

from __future__ import annotations

from typing import Sequence

from s3core.generation.base import Generator, Message, Usage
from s3core.generation.prompts import (
    answer_messages_for_context,
    format_context,
    judge_messages,
    postprocess_answer,
)
from s3core.metrics import judge_verdict
from s3core.types import Doc

__all__ = ["JUDGE_RETRY_TEXT", "answer", "fit_answer_messages", "judge"]

JUDGE_RETRY_TEXT = "Reply with only one word: yes or no."


def fit_answer_messages(gen: Generator, question: str, docs: Sequence[Doc]) -> list[Message]:
    """Answer prompt for ``question`` over ``docs`` that fits ``gen.max_prompt_tokens``.

    Only the documents are cut (from the end of the context); the question and the instructions
    are always kept whole.
    """
    context = format_context(docs)
    msgs = answer_messages_for_context(question, context)
    limit = gen.max_prompt_tokens
    if not docs or gen.count_prompt_tokens(msgs) <= limit:
        return msgs
    overhead = gen.count_prompt_tokens(answer_messages_for_context(question, "x"))
    budget = limit - overhead
    # Re-tokenising a cut text can merge or split tokens at the edge: shrink until it fits.
    for _ in range(8):
        if budget <= 0:
            cut = "…"
        else:
            cut = gen.truncate_tokens(context, budget).rstrip() + " …"
        msgs = answer_messages_for_context(question, cut)
        over = gen.count_prompt_tokens(msgs) - limit
        if over <= 0 or budget <= 0:
            break
        budget -= max(over, 1)
    return msgs


def answer(
    gen: Generator,
    items: Sequence[tuple[str, Sequence[Doc]]],
    max_new_tokens: int,
    usage: Usage | None = None,
) -> list[str]:
    """Short greedy answers, one per ``(question, docs)``; empty docs = closed book.

    Token usage is added to ``usage`` when one is given.
    """
    if not items:
        return []
    convs = [fit_answer_messages(gen, q, docs) for q, docs in items]
    out = gen.generate(convs, max_new_tokens, 0.0, None)
    if usage is not None:
        usage.add(out.usage)
    return [postprocess_answer(t) for t in out.texts]


def judge(
    gen: Generator,
    items: Sequence[tuple[str, str, Sequence[str]]],
    max_new_tokens: int = 8,
    usage: Usage | None = None,
) -> list[tuple[bool, str]]:
    """Judge ``(question, response, golds)`` items: ``(correct, raw_output)`` per item.

    The verdict is :func:`s3core.metrics.judge_verdict` of the output.  When it is neither yes nor
    no, the judge is asked once more (its first reply plus a "yes or no only" turn); still neither
    → False.  An empty response is False without asking the model.
    """
    results: list[tuple[bool, str] | None] = [None] * len(items)
    convs: list[list[Message]] = []
    idx: list[int] = []
    for i, (question, response, golds) in enumerate(items):
        if not response.strip():
            results[i] = (False, "")
            continue
        convs.append(judge_messages(question, response, golds))
        idx.append(i)
    if convs:
        out = gen.generate(convs, max_new_tokens, 0.0, None)
        if usage is not None:
            usage.add(out.usage)
        retry_convs: list[list[Message]] = []
        retry_idx: list[int] = []
        first_raw: dict[int, str] = {}
        for conv, i, text in zip(convs, idx, out.texts):
            verdict = judge_verdict(text)
            if verdict is None:
                retry_convs.append([*conv, {"role": "assistant", "content": text.strip()},
                                    {"role": "user", "content": JUDGE_RETRY_TEXT}])
                retry_idx.append(i)
                first_raw[i] = text
            else:
                results[i] = (verdict, text)
        if retry_convs:
            again = gen.generate(retry_convs, max_new_tokens, 0.0, None)
            if usage is not None:
                usage.add(again.usage)
            for i, text in zip(retry_idx, again.texts):
                verdict = judge_verdict(text)
                results[i] = (bool(verdict), f"{first_raw[i]}\n[retry] {text}")
    return [r if r is not None else (False, "") for r in results]
