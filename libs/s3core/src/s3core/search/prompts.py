"""The searcher's prompt and the text the environment appends (spec §2).  Our own wording.

``SEARCHER_PROMPT_VERSION`` names this exact set of templates: change any text below and bump it
(trajectories and checkpoints record which prompt a policy was trained with).

Layout of an episode's token sequence (one assistant message that the environment extends)::

    <chat template: system + user(instructions, question, block 0)> <assistant start>   # prompt
    turn 1 (generated)                                                                  # action
    \\n\\n<information block="1" query="...">\\n[1] Title\\ntext ...\\n</information>\\n\\n   # observation
    turn 2 (generated)                                                                  # action
    \\n\\n<feedback>...</feedback>\\n\\n                                                  # observation
    ...

Before the final turn (the one with no search) the observation ends with :data:`FINAL_TURN_NOTE`;
with ``max_turns == 0`` the note is part of the initial prompt instead.
"""

from __future__ import annotations

from typing import Any, Sequence

from s3core.types import Doc

__all__ = [
    "SEARCHER_PROMPT_VERSION",
    "FEEDBACK_TEXT",
    "FINAL_TURN_NOTE",
    "INFO_OPEN",
    "INFO_CLOSE",
    "FEEDBACK_OPEN",
    "FEEDBACK_CLOSE",
    "FALLBACK_CHAT_TEMPLATE",
    "encode",
    "truncate_to_tokens",
    "format_block_docs",
    "render_block",
    "block_observation",
    "feedback_observation",
    "searcher_messages",
    "prompt_token_ids",
]

SEARCHER_PROMPT_VERSION = "s3-search-v2"

INFO_OPEN = "<information"
INFO_CLOSE = "</information>"
FEEDBACK_OPEN = "<feedback>"
FEEDBACK_CLOSE = "</feedback>"

_SYSTEM = (
    "You are a research assistant who looks up evidence in a search engine. You never answer "
    "questions yourself: another model will answer from the documents you pick."
)

_INSTRUCTIONS = """\
Find documents that let someone answer the question below.

Search results arrive as numbered documents inside <information> ... </information>. In each of your turns, write these parts in this order:
1. (optional) Short private notes: <think> ... </think>
2. The numbers of the documents in the most recent <information> block that help answer the question, at most {select_max}, best first: <important_info>[2, 5]</important_info> Write <important_info>[]</important_info> when none of them helps.
3. Whether the documents you have picked so far are enough to answer the question: <search_complete>true</search_complete> or <search_complete>false</search_complete>
4. Only if not complete: one new search query in JSON, different from your earlier queries: <query>{{"query": "..."}}</query>

Stop after </query> and wait for the results. Once you write <search_complete>true</search_complete> the search ends.
You can search at most {max_turns} times.

Question: {question}

Results of a first search for the question itself:
{block0}"""

# Observations carry no copyable tag or placeholder (no ``[...]``, no ``"..."``): a small policy
# copies what it sees, and a copied placeholder is a malformed action.  They name the parts of a
# turn in words and point back to the format in the instructions.
FEEDBACK_TEXT = (
    "That turn had no action I could use. Write your turn in the format from the instructions: the "
    "numbers of the useful documents in the important_info tags, then search_complete true or false, "
    "and, if not complete, a new search query in the query tags."
)

FINAL_TURN_NOTE = (
    "No searches are left. In the important_info tags, give the numbers of the useful documents of "
    "the most recent information block, then end the search with search_complete true."
)

# Used when a tokenizer has no chat template (a base model).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def encode(tokenizer: Any, text: str, *, split_special: bool = True) -> list[int]:
    """Token ids of ``text`` with no special tokens added.

    ``split_special=True`` (the default, used for everything the environment appends) tokenises a
    literal ``<|im_end|>`` inside a document as plain text, never as a control token.
    """
    if not text:
        return []
    try:
        out = tokenizer(text, add_special_tokens=False, split_special_tokens=split_special)
    except TypeError:  # tokenizers without the option
        out = tokenizer(text, add_special_tokens=False)
    return [int(i) for i in out["input_ids"]]


def truncate_to_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (a cut multi-byte character is dropped)."""
    if max_tokens <= 0:
        return ""
    ids = encode(tokenizer, text)
    if len(ids) <= max_tokens:
        return text
    cut = str(tokenizer.decode(ids[:max_tokens], skip_special_tokens=False))
    return cut.rstrip("\ufffd")


def format_block_docs(docs: Sequence[Doc]) -> str:
    """Numbered docs of one block: ``[n] Title`` on one line, the text on the next."""
    if not docs:
        return "(no documents found)"
    return "\n".join(f"[{i}] {_one_line(d.title)}\n{_one_line(d.text)}" for i, d in enumerate(docs, start=1))


def render_block(index: int, query: str, docs: Sequence[Doc], tokenizer: Any, max_obs_tokens: int) -> str:
    """One ``<information>`` block; the documents part is cut to ``max_obs_tokens`` tokens.

    Only what the searcher *sees* is cut: the block's docs in the trajectory stay whole, so context
    assembly and the ids the searcher selects still refer to every retrieved document.
    """
    body = truncate_to_tokens(tokenizer, format_block_docs(docs), max_obs_tokens)
    q = _one_line(query).replace('"', "'")
    head = f'{INFO_OPEN} block="{index}"' + (f' query="{q}"' if q else "") + ">"
    return f"{head}\n{body}\n{INFO_CLOSE}"


def _wrap_observation(inner: str, final_next: bool) -> str:
    tail = f"\n\n{FINAL_TURN_NOTE}" if final_next else ""
    return f"\n\n{inner}{tail}\n\n"


def block_observation(block_text: str, *, final_next: bool) -> str:
    """What the environment appends after a turn whose query was searched."""
    return _wrap_observation(block_text, final_next)


def feedback_observation(*, final_next: bool) -> str:
    """What the environment appends after a turn with no usable action."""
    return _wrap_observation(f"{FEEDBACK_OPEN}{FEEDBACK_TEXT}{FEEDBACK_CLOSE}", final_next)


def searcher_messages(question: str, block0_text: str, *, select_max: int, max_turns: int) -> list[dict[str, str]]:
    """System and user messages of the searcher's prompt.

    The question keeps its line breaks (MIRAGE questions carry an ``Options:`` list).
    """
    user = _INSTRUCTIONS.format(
        select_max=select_max, max_turns=max_turns, question=str(question).strip(), block0=block0_text
    )
    if max_turns <= 0:
        user += f"\n\n{FINAL_TURN_NOTE}"
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def prompt_token_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Render ``messages`` with the tokenizer's chat template (a generic one if it has none)."""
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, chat_template=template
    )
    return encode(tokenizer, str(text), split_special=False)
