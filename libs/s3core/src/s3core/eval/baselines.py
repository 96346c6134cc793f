"""Baselines run through the same evaluation pipeline as s3 (spec §7).  Our own prompts and code.

* ``deepretrieval`` -- DeepRetrieval-style: the LLM rewrites the question into one search query;
  the top-k docs for that query go to the generator.
* ``ircot`` -- IRCoT-style interleaving: retrieve k docs for the question, then up to
  ``ircot_steps`` (default 3) times let the LLM write the next chain-of-thought sentence given the
  question, the docs so far and its reasoning so far, and retrieve k docs with that sentence.  It
  stops early when a sentence contains "So the answer is".  The generator answers from all
  retrieved docs (deduplicated, first ``k * ircot_steps`` kept).
* ``search-r1`` -- Search-R1-style: the LLM itself runs a search loop, writing
  ``<search>query</search>`` (k docs come back in ``<information>``) or ``<answer>...</answer>``;
  at most ``search_r1_max_searches`` searches (default: ``search.max_turns``), then one last turn
  that must answer.  Its own answer is scored (no tag by the last turn = empty answer = wrong).
* ``search-r1-context`` -- the same loop, but its gathered documents (deduplicated) go to the
  frozen generator, which answers: how the reference evaluates Search-R1 next to s3.
* ``search-o1`` -- Search-o1-style agentic search with a *reason-in-documents* step: the LLM
  reasons and writes ``<|begin_search_query|> q <|end_search_query|>``; the top-k docs for ``q``
  are not pasted back raw but first read by the LLM in a separate call (given the question, the
  reasoning so far and the query) that writes only what helps; that note comes back inside
  ``<|begin_search_result|> ... <|end_search_result|>`` and the reasoning goes on, at most
  ``search_o1_max_searches`` searches (default ``search.max_turns``).  The generator answers from
  all retrieved docs (its own final answer and the notes are recorded in ``extra``).
* ``cot`` -- closed-book chain of thought: the LLM reasons step by step and ends with "So the
  answer is X"; X is scored (no retrieval; the LLM is ``--baseline-llm``, by default the
  generator itself, so ``cot`` is the generator's own chain of thought).

Which LLM serves the baselines' free-text calls: a generator service's ``Complete`` RPC.  `s3 eval`
uses ``--baseline-llm ADDR`` (the address of any generator service -- start one with the searcher
model to compare with s3 fairly, e.g. ``s3 serve generator --model Qwen/Qwen2.5-7B-Instruct``) and
falls back to the evaluation's generator itself.

``BASELINE_PROMPT_VERSION`` names this exact set of templates; results record it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from s3core.eval.methods import CompleteFn, MethodContext, MethodOutput, register_method
from s3core.generation.prompts import format_context
from s3core.search.context import dedup_docs
from s3core.types import Doc, Question

__all__ = [
    "BASELINE_PROMPT_VERSION",
    "ANSWER_PHRASE",
    "complete_via_generator",
    "deepretrieval_messages",
    "parse_rewrite",
    "ircot_messages",
    "first_sentence",
    "search_r1_messages",
    "parse_search_r1",
    "cot_messages",
    "parse_cot_answer",
    "search_o1_messages",
    "reason_in_documents_messages",
    "parse_search_o1",
]

BASELINE_PROMPT_VERSION = "s3-baselines-v2"  # v2: + cot, search-o1 (v1 templates unchanged)

# --- the LLM behind the baselines ----------------------------------------------------------------


def complete_via_generator(client: Any, timeout: float | None = None) -> CompleteFn:
    """A :class:`CompleteFn` over a generator service's ``Complete`` RPC (``client``: a
    :class:`~s3core.rpc.clients.GeneratorClient`)."""
    deadline = timeout if timeout is not None else getattr(client, "timeout", 600.0)

    def complete(conversations: Sequence[Sequence[dict[str, str]]], max_new_tokens: int,
                 temperature: float = 0.0, stop: Sequence[str] = ()) -> list[str]:
        return list(client.complete(conversations, max_new_tokens, temperature=temperature, stop=stop,
                                    timeout=deadline))

    return complete


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _clip(s: str, n: int) -> str:
    s = _one_line(s)
    if len(s) <= n:
        return s
    cut = s[:n]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut


def _search_many(ctx: MethodContext, queries: Sequence[str]) -> dict[str, list[Doc]]:
    """One batched retrieval for the distinct queries."""
    assert ctx.search is not None
    uniq = list(dict.fromkeys(queries))
    if not uniq:
        return {}
    return {q: list(d)[: ctx.k] for q, d in zip(uniq, ctx.search(uniq, ctx.k))}


def _llm(ctx: MethodContext) -> CompleteFn:
    if ctx.complete is None:
        raise ValueError("this baseline needs an LLM (MethodContext.complete)")
    return ctx.complete


# --- DeepRetrieval-style: one rewritten query -----------------------------------------------------

_DR_SYSTEM = "You write queries for a search engine over Wikipedia passages."
_DR_USER = (
    "Rewrite the question below as one search query that finds a passage containing its answer. "
    "Keep every name and key term, and add words such a passage is likely to contain. "
    "Reply with the query only, on one line.\n\n"
    "Question: {question}\n"
    "Query:"
)
DR_MAX_NEW_TOKENS = 64
MAX_QUERY_CHARS = 256
_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:search\s+)?query\s*(?:\*\*)?\s*[:：]\s*", re.IGNORECASE)
_QUERY_TAG = re.compile(r"<query>(.*?)(?:</query>|$)", re.DOTALL | re.IGNORECASE)


def deepretrieval_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": _DR_SYSTEM},
            {"role": "user", "content": _DR_USER.format(question=question.strip())}]


def parse_rewrite(text: str, question: str) -> tuple[str, bool]:
    """The query from the LLM's reply; ``(question, True)`` when the reply holds no usable query."""
    m = _QUERY_TAG.search(text)
    body = m.group(1) if m else text
    line = next((ln for ln in body.splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
            if isinstance(obj, dict) and isinstance(obj.get("query"), str):
                line = obj["query"]
        except ValueError:
            pass
    line = line.strip().strip("`*\"'“”").strip()
    query = _clip(line, MAX_QUERY_CHARS)
    if not query:
        return question, True
    return query, False


@register_method("deepretrieval", needs_retriever=True, needs_llm=True)
def deepretrieval(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """DeepRetrieval-style: the LLM rewrites the question into one query; top-k for that query."""
    texts = _llm(ctx)([deepretrieval_messages(q.question) for q in questions], DR_MAX_NEW_TOKENS, 0.0, ())
    parsed = [parse_rewrite(t, q.question) for t, q in zip(texts, questions)]
    found = _search_many(ctx, [p[0] for p in parsed])
    return [
        MethodOutput(docs=found[query], extra={"query": query, "fallback_to_question": fallback, "raw": text})
        for (query, fallback), text in zip(parsed, texts)
    ]


# --- IRCoT-style: interleaved retrieval and chain of thought -------------------------------------

ANSWER_PHRASE = "so the answer is"
IRCOT_DEFAULT_STEPS = 3
IRCOT_MAX_NEW_TOKENS = 64
_IRCOT_SYSTEM = "You reason one short step at a time."
_IRCOT_USER = (
    "Paragraphs:\n{context}\n\n"
    "Question: {question}\n\n"
    "Reason step by step with the paragraphs. Write only the NEXT single sentence of the reasoning. "
    "Once you can answer, write the sentence \"So the answer is <answer>.\"\n\n"
    "Reasoning so far: {so_far}\n"
    "Next sentence:"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def ircot_messages(question: str, docs: Sequence[Doc], sentences: Sequence[str]) -> list[dict[str, str]]:
    context = format_context(docs) if docs else "(none)"
    so_far = " ".join(sentences) if sentences else "(nothing yet)"
    return [{"role": "system", "content": _IRCOT_SYSTEM},
            {"role": "user", "content": _IRCOT_USER.format(context=context, question=question.strip(), so_far=so_far)}]


def first_sentence(text: str, max_chars: int = 300) -> str:
    """The first sentence of a reply (a rambling reply is cut), on one line."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _one_line(line)
    if not line:
        return ""
    return _clip(_SENTENCE_END.split(line, maxsplit=1)[0], max_chars)


def _cot_answer(sentence: str) -> str:
    i = sentence.lower().find(ANSWER_PHRASE)
    return sentence[i + len(ANSWER_PHRASE):].strip().strip(":").strip().rstrip(".").strip() if i >= 0 else ""


@register_method("ircot", needs_retriever=True, needs_llm=True)
def ircot(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """IRCoT-style: retrieval interleaved with chain-of-thought sentences; the generator answers."""
    complete = _llm(ctx)
    steps = int(ctx.options.get("ircot_steps", IRCOT_DEFAULT_STEPS))
    if steps < 1:
        raise ValueError(f"ircot_steps must be >= 1, got {steps}")
    first = _search_many(ctx, [q.question for q in questions])
    docs: list[list[Doc]] = [list(first[q.question]) for q in questions]
    cot: list[list[str]] = [[] for _ in questions]
    queries: list[list[str]] = [[q.question] for q in questions]
    stop_reason = ["max_steps"] * len(questions)
    active = list(range(len(questions)))
    for _ in range(steps):
        if not active:
            break
        texts = complete([ircot_messages(questions[i].question, dedup_docs(docs[i]), cot[i]) for i in active],
                         IRCOT_MAX_NEW_TOKENS, 0.0, ())
        to_search: list[tuple[int, str]] = []
        for i, text in zip(active, texts):
            s = first_sentence(text)
            if not s:
                stop_reason[i] = "empty"
                continue
            cot[i].append(s)
            if ANSWER_PHRASE in s.lower():
                stop_reason[i] = "answer"
                continue
            to_search.append((i, s))
        found = _search_many(ctx, [s for _, s in to_search])
        for i, s in to_search:
            docs[i].extend(found[s])
            queries[i].append(s)
        active = [i for i, _ in to_search]
    cap = ctx.k * steps
    return [
        MethodOutput(
            docs=dedup_docs(docs[i])[:cap],
            extra={"cot": cot[i], "queries": queries[i], "stop": stop_reason[i], "cot_answer": _cot_answer(cot[i][-1])
                   if cot[i] else ""},
        )
        for i in range(len(questions))
    ]


# --- Search-R1-style: the LLM searches and answers itself ---------------------------------------

SR1_STOPS = ("</search>", "</answer>")
_SR1_SYSTEM = "You answer questions, and you can use a search engine to look facts up."
_SR1_USER = (
    "Answer the question below. You may search up to {max_searches} times.\n"
    "- Optional private reasoning goes inside <think> ... </think>.\n"
    "- To search, write <search> your query </search> and stop; the results come back inside "
    "<information> ... </information>.\n"
    "- When you know the answer, write it in a few words inside <answer> ... </answer>, "
    "for example <answer> Paris </answer>.\n\n"
    "Question: {question}"
)
_SR1_INFO = "<information>\n{docs}\n</information>"
_SR1_LAST = "No searches are left. Write your answer now inside <answer> ... </answer>."
_SR1_FEEDBACK = "Write either <search> a query </search> or <answer> the answer </answer>."
MAX_ANSWER_CHARS = 300
_OPEN = re.compile(r"<(search|answer)>", re.IGNORECASE)


def search_r1_messages(question: str, max_searches: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": _SR1_SYSTEM},
            {"role": "user", "content": _SR1_USER.format(question=question.strip(), max_searches=max_searches)}]


def parse_search_r1(text: str) -> tuple[str, str]:
    """One turn's action: ``("answer", text)``, ``("search", query)`` or ``("invalid", "")``.

    The turn is cut at the first ``</search>`` or ``</answer>`` (what came after it is ignored: a
    model that does not stop may invent its own search results).  The last opening tag before the
    cut names the action; an unclosed tag (stop string cut off, or out of tokens) still counts.
    """
    low = text.lower()
    ends = [p for p in (low.find(s) for s in SR1_STOPS) if p >= 0]
    cut = text[: min(ends)] if ends else text
    opens = list(_OPEN.finditer(cut))
    if not opens:
        return "invalid", ""
    last = opens[-1]
    body = _one_line(cut[last.end():])
    kind = last.group(1).lower()
    if kind == "answer":
        return "answer", _clip(body, MAX_ANSWER_CHARS)
    body = _clip(body, MAX_QUERY_CHARS)
    return ("search", body) if body else ("invalid", "")


def _search_r1_loop(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    complete = _llm(ctx)
    max_searches = int(ctx.options.get("search_r1_max_searches", ctx.search_config.max_turns))
    max_new = int(ctx.options.get("search_r1_max_new_tokens", ctx.search_config.max_new_tokens))
    convs = [search_r1_messages(q.question, max_searches) for q in questions]
    docs: list[list[Doc]] = [[] for _ in questions]
    queries: list[list[str]] = [[] for _ in questions]
    raw: list[list[str]] = [[] for _ in questions]
    answers: list[str | None] = [None] * len(questions)
    searches = [0] * len(questions)
    active = list(range(len(questions)))
    turn = 0
    while active:
        texts = complete([convs[i] for i in active], max_new, 0.0, list(SR1_STOPS))
        to_search: list[tuple[int, str]] = []
        nxt: list[int] = []
        for i, text in zip(active, texts):
            raw[i].append(text)
            kind, body = parse_search_r1(text)
            closing = {"search": "</search>", "answer": "</answer>"}.get(kind, "")
            convs[i] = [*convs[i], {"role": "assistant", "content": text.rstrip() + closing}]
            out_of_searches = searches[i] >= max_searches
            if kind == "answer":
                answers[i] = body
            elif out_of_searches:
                answers[i] = ""  # the last turn did not answer: scored as an empty answer
            elif kind == "search":
                to_search.append((i, body))
            else:
                convs[i].append({"role": "user", "content": _SR1_FEEDBACK})
                nxt.append(i)
        found = _search_many(ctx, [q for _, q in to_search])
        for i, q in to_search:
            searches[i] += 1
            queries[i].append(q)
            docs[i].extend(found[q])
            msg = _SR1_INFO.format(docs=format_context(found[q]) or "(no results)")
            if searches[i] >= max_searches:
                msg += "\n\n" + _SR1_LAST
            convs[i].append({"role": "user", "content": msg})
            nxt.append(i)
        active = sorted(nxt)
        turn += 1
        if turn > 2 * max_searches + 2:  # invalid turns count too: never loop forever
            for i in active:
                answers[i] = ""
            break
    return [
        MethodOutput(
            docs=dedup_docs(docs[i]), answer=answers[i] or "",
            extra={"queries": queries[i], "turns": len(raw[i]), "answered": bool(answers[i]), "raw": raw[i]},
        )
        for i in range(len(questions))
    ]


@register_method("search-r1", needs_retriever=True, needs_llm=True)
def search_r1(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """Search-R1-style: the LLM runs <search>/<answer> turns itself; its own answer is scored."""
    return _search_r1_loop(questions, ctx)


@register_method("search-r1-context", needs_retriever=True, needs_llm=True)
def search_r1_context(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """Search-R1-style search; its gathered docs go to the generator, which answers (as the reference evaluates it)."""
    out = []
    for o in _search_r1_loop(questions, ctx):
        out.append(MethodOutput(docs=o.docs, extra={**o.extra, "own_answer": o.answer}))
    return out


# --- CoT: closed-book chain of thought ---------------------------------------------------------------

COT_MAX_NEW_TOKENS = 256
_COT_SYSTEM = "You think step by step."
_COT_USER = (
    "Answer the question below. First reason step by step in a few short sentences. Then end with one "
    "last line of the form \"So the answer is <answer>.\", where <answer> is a few words only{mc}.\n\n"
    "Question: {question}"
)
_COT_MC = " (for a multiple-choice question: the option's letter)"


def cot_messages(question: str) -> list[dict[str, str]]:
    from s3core.metrics import parse_options

    mc = _COT_MC if parse_options(question) else ""
    return [{"role": "system", "content": _COT_SYSTEM},
            {"role": "user", "content": _COT_USER.format(question=question.strip(), mc=mc)}]


def parse_cot_answer(text: str) -> tuple[str, bool]:
    """The answer after the last "so the answer is" (``(answer, True)``), else the reply's last
    non-empty line (``(line, False)``), cut to ``MAX_ANSWER_CHARS``."""
    low = text.lower()
    i = low.rfind(ANSWER_PHRASE)
    if i >= 0:
        tail = text[i + len(ANSWER_PHRASE):]
        tail = next((ln for ln in tail.splitlines() if ln.strip()), "")
        ans = tail.strip().lstrip(":").strip().rstrip(".").strip()
        return _clip(ans, MAX_ANSWER_CHARS), True
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (_clip(lines[-1], MAX_ANSWER_CHARS), False) if lines else ("", False)


@register_method("cot", needs_retriever=False, needs_llm=True, uses_docs=False)
def cot(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """Closed-book chain of thought: the LLM reasons, then "So the answer is X"; X is scored."""
    max_new = int(ctx.options.get("cot_max_new_tokens", COT_MAX_NEW_TOKENS))
    texts = _llm(ctx)([cot_messages(q.question) for q in questions], max_new, 0.0, ())
    out = []
    for text in texts:
        answer, phrased = parse_cot_answer(text)
        out.append(MethodOutput(docs=[], answer=answer, extra={"cot": text, "answer_phrase": phrased}))
    return out


# --- Search-o1-style: agentic search with a reason-in-documents step --------------------------------

SO1_QUERY_OPEN, SO1_QUERY_CLOSE = "<|begin_search_query|>", "<|end_search_query|>"
SO1_RESULT_OPEN, SO1_RESULT_CLOSE = "<|begin_search_result|>", "<|end_search_result|>"
SO1_STOPS = (SO1_QUERY_CLOSE, "</answer>")
SO1_REASON_MAX_NEW_TOKENS = 160
_SO1_SYSTEM = "You answer questions by reasoning step by step, and you can search Wikipedia while you reason."
_SO1_USER = (
    "Answer the question below. Reason step by step. Whenever you need a fact you do not know, write "
    f"{SO1_QUERY_OPEN} a search query {SO1_QUERY_CLOSE} and stop; what the search found comes back inside "
    f"{SO1_RESULT_OPEN} ... {SO1_RESULT_CLOSE}. You may search up to {{max_searches}} times. When you know the "
    "answer, write it in a few words inside <answer> ... </answer>{mc}.\n\n"
    "Question: {question}"
)
_SO1_MC = " (for a multiple-choice question: the option's letter)"
_SO1_LAST = "No searches are left. Write your answer now inside <answer> ... </answer>."
_SO1_FEEDBACK = f"Continue: write {SO1_QUERY_OPEN} a query {SO1_QUERY_CLOSE} or <answer> the answer </answer>."
_RID_SYSTEM = "You read search results carefully and keep only what helps."
_RID_USER = (
    "Question: {question}\n\n"
    "Reasoning so far:\n{reasoning}\n\n"
    "Current search query: {query}\n\n"
    "Search results:\n{docs}\n\n"
    "Read the search results with the question, the reasoning so far and the query in mind. Write, in a few "
    "sentences, only the facts from the results that help answer the query or the question. If none help, "
    "write exactly: No helpful information found."
)
_SO1_OPEN = re.compile(r"<\|begin_search_query\|>|<answer>", re.IGNORECASE)


def search_o1_messages(question: str, max_searches: int) -> list[dict[str, str]]:
    from s3core.metrics import parse_options

    mc = _SO1_MC if parse_options(question) else ""
    return [{"role": "system", "content": _SO1_SYSTEM},
            {"role": "user", "content": _SO1_USER.format(question=question.strip(), max_searches=max_searches, mc=mc)}]


def reason_in_documents_messages(question: str, reasoning: str, query: str, docs: Sequence[Doc]) -> list[dict[str, str]]:
    return [{"role": "system", "content": _RID_SYSTEM},
            {"role": "user", "content": _RID_USER.format(question=question.strip(), reasoning=reasoning.strip() or "(none)",
                                                         query=query, docs=format_context(docs) or "(no results)")}]


def parse_search_o1(text: str) -> tuple[str, str]:
    """One Search-o1 turn: ``("answer", text)``, ``("search", query)`` or ``("invalid", "")``;
    the turn is cut at the first query close or ``</answer>``, the last opening marker decides."""
    low = text.lower()
    ends = [p for p in (low.find(s.lower()) for s in SO1_STOPS) if p >= 0]
    cut = text[: min(ends)] if ends else text
    opens = list(_SO1_OPEN.finditer(cut))
    if not opens:
        return "invalid", ""
    last = opens[-1]
    body = _one_line(cut[last.end():])
    if last.group(0).lower() == "<answer>":
        return "answer", _clip(body, MAX_ANSWER_CHARS)
    body = _clip(body, MAX_QUERY_CHARS)
    return ("search", body) if body else ("invalid", "")


@register_method("search-o1", needs_retriever=True, needs_llm=True)
def search_o1(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
    """Search-o1-style: reasoning with searches, each result condensed by a reason-in-documents call; the generator answers from the docs."""
    complete = _llm(ctx)
    max_searches = int(ctx.options.get("search_o1_max_searches", ctx.search_config.max_turns))
    max_new = int(ctx.options.get("search_o1_max_new_tokens", max(ctx.search_config.max_new_tokens, 256)))
    convs = [search_o1_messages(q.question, max_searches) for q in questions]
    reasoning = [""] * len(questions)
    docs: list[list[Doc]] = [[] for _ in questions]
    queries: list[list[str]] = [[] for _ in questions]
    notes: list[list[str]] = [[] for _ in questions]
    answers: list[str | None] = [None] * len(questions)
    searches = [0] * len(questions)
    active = list(range(len(questions)))
    turn = 0
    while active:
        texts = complete([convs[i] for i in active], max_new, 0.0, list(SO1_STOPS))
        to_search: list[tuple[int, str]] = []
        nxt: list[int] = []
        for i, text in zip(active, texts):
            kind, body = parse_search_o1(text)
            closing = {"search": SO1_QUERY_CLOSE, "answer": "</answer>"}.get(kind, "")
            turn_text = text.rstrip() + closing
            reasoning[i] += turn_text + "\n"
            convs[i] = [*convs[i], {"role": "assistant", "content": turn_text}]
            if kind == "answer":
                answers[i] = body
            elif searches[i] >= max_searches:
                answers[i] = ""
            elif kind == "search":
                to_search.append((i, body))
            else:
                convs[i].append({"role": "user", "content": _SO1_FEEDBACK})
                nxt.append(i)
        found = _search_many(ctx, [q for _, q in to_search])
        if to_search:
            reads = complete([reason_in_documents_messages(questions[i].question, reasoning[i], q, found[q])
                              for i, q in to_search], SO1_REASON_MAX_NEW_TOKENS, 0.0, ())
        else:
            reads = []
        for (i, q), note in zip(to_search, reads):
            searches[i] += 1
            queries[i].append(q)
            docs[i].extend(found[q])
            note = _one_line(note) or "No helpful information found."
            notes[i].append(note)
            msg = f"{SO1_RESULT_OPEN} {note} {SO1_RESULT_CLOSE}"
            reasoning[i] += msg + "\n"
            if searches[i] >= max_searches:
                msg += "\n\n" + _SO1_LAST
            convs[i].append({"role": "user", "content": msg})
            nxt.append(i)
        active = sorted(nxt)
        turn += 1
        if turn > 2 * max_searches + 2:
            for i in active:
                answers[i] = ""
            break
    return [
        MethodOutput(docs=dedup_docs(docs[i]), extra={"queries": queries[i], "notes": notes[i],
                                                       "own_answer": answers[i] or "", "reasoning": reasoning[i]})
        for i in range(len(questions))
    ]
