"""Parsing one searcher turn (spec §2 step 2).

The searcher writes tags; this module turns one turn's generated text into a :class:`ParsedAction`.
It never raises: any text, however malformed, gives an action (possibly an invalid one).

Rules, in the spec's precedence:

* Everything after the first ``</query>`` is discarded before anything else is looked at.
* ``<think>...</think>`` blocks are removed (tags inside them do not count).  An unclosed
  ``<think>`` only loses the opening tag itself, so a model that forgets ``</think>`` keeps its action.
* ``<important_info>[i, j]</important_info>`` selects 1-based doc ids of the latest information
  block.  Only a **well-formed list** is a selection: ``[`` ... ``]`` around comma-separated ids
  (``[2, 5]``, ``[2,5,]``, ``["2", "5"]``, ``[Doc 2, Doc 5]``, line breaks allowed) or the empty list
  ``[]`` -- the searcher saying "nothing here helps".  Anything else -- a placeholder such as
  ``[...]``, a cut-off ``[``, a bare or blank tag, ``none``, ids without brackets, words -- is *no*
  selection: the block then counts as unselected and contributes all its docs to the context
  (spec §3 step 2), so a malformed turn can never empty the generator's context.  Inside a
  well-formed list, ids outside ``1..n``, repeated ids, non-integers and ids beyond the first
  ``select_max`` valid ones are dropped.  A non-empty list none of whose ids is valid (e.g. ``[9]``
  for a block of 8) is likewise *no* selection: it points at documents that do not exist, which says
  nothing about the ones that do, so they all stay in the context.
* ``<search_complete>X</search_complete>``: X in true/yes/1/y (any case, surrounding quotes and
  punctuation ignored) means done; any other value means not done; no tag gives ``None``.
* ``<query>...</query>``: JSON with a ``"query"`` key (a list value takes its first element; a JSON
  string or list at the top level is accepted too); invalid JSON or a missing key means the raw
  inner text is the query.  A query with no letter or digit (blank, ``...``) is no query.  An unclosed ``<query>`` counts only when
  the rest of the text is a JSON object with a ``"query"`` key (a model that forgot the closing tag
  before stopping); otherwise it is ignored.
* Tags are matched case-insensitively and may contain spaces (``< query >``, ``</ Query>``).  The
  first occurrence of each tag counts.  A missing closing tag of ``important_info`` or
  ``search_complete`` ends its content at the next ``<`` or line break.

``valid`` is true when the turn finishes the search or carries a query.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

__all__ = ["ParsedAction", "parse_turn", "cut_at_first_query_end", "QUERY_END"]

QUERY_END = "</query>"

_FLAGS = re.IGNORECASE | re.DOTALL


def _open(tag: str) -> str:
    return rf"<\s*{tag}\s*>"


def _close(tag: str) -> str:
    return rf"<\s*/\s*{tag}\s*>"


_QUERY_END_RE = re.compile(_close("query"), _FLAGS)
_THINK_BLOCK_RE = re.compile(_open("think") + r".*?" + _close("think"), _FLAGS)
_THINK_TAG_RE = re.compile(_open("think") + "|" + _close("think"), _FLAGS)
_QUERY_OPEN_RE = re.compile(_open("query"), _FLAGS)
_INT_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")
_HAS_WORD_RE = re.compile(r"[^\W_]")  # a letter or a digit (any script)
_TRUE_WORDS = {"true", "yes", "1", "y"}


@dataclass
class ParsedAction:
    """What one searcher turn asked for."""

    query: str | None = None
    important_ids: list[int] = field(default_factory=list)  # 1-based, filtered
    has_selection: bool = False
    search_complete: bool | None = None  # None: no tag
    valid: bool = False
    truncated_text: str = ""  # the text up to and including the first </query>

    @property
    def done(self) -> bool:
        return self.search_complete is True


def cut_at_first_query_end(text: str) -> str:
    """``text`` up to and including the first ``</query>`` (tolerant of case and spaces)."""
    m = _QUERY_END_RE.search(text)
    return text[: m.end()] if m else text


def _tag_content(text: str, tag: str) -> str | None:
    """Inner text of the first ``<tag>``; an unclosed tag runs to the next ``<`` or line break."""
    m = re.search(_open(tag), text, _FLAGS)
    if not m:
        return None
    rest = text[m.end():]
    close = re.search(_close(tag), rest, _FLAGS)
    if close:
        return rest[: close.start()]
    rest = rest.lstrip()
    stop = re.search(r"[<\n]", rest)
    return rest[: stop.start()] if stop else rest


_ITEM = r"""\s*["'`]?\s*(?:doc(?:ument)?\s*#?\s*)?[-+]?\d+(?:\.\d+)?\s*["'`]?\s*"""
_LIST_RE = re.compile(rf"\[(?:{_ITEM}(?:,{_ITEM})*,?\s*)?\]", re.IGNORECASE)


def _parse_ids(content: str, n_docs: int, select_max: int) -> tuple[list[int], bool]:
    """``(ids, has_selection)`` of an ``important_info`` tag's content (see the module docstring)."""
    text = content.strip()
    if not _LIST_RE.fullmatch(text):
        return [], False  # not a well-formed list: no selection
    found = _INT_RE.findall(text)
    if not found:
        return [], True  # [] -- an explicit selection of nothing
    ids: list[int] = []
    for tok in found:
        whole, _, frac = tok.lstrip("+").partition(".")
        if frac.strip("0") or len(whole) > 9:  # not an integer, or absurdly large
            continue
        i = int(whole)
        if 1 <= i <= n_docs and i not in ids:
            ids.append(i)
            if len(ids) >= select_max:
                break
    return ids, bool(ids)


def _parse_complete(content: str) -> bool:
    word = content.strip().strip("\"'`.,;:!()[]{} \t\r\n").lower()
    return word in _TRUE_WORDS


def _query_from_json(value: object) -> str | None:
    """The query of a decoded JSON value, or None when it has none."""
    if isinstance(value, dict):
        if "query" not in value:
            return None
        value = value["query"]
    if isinstance(value, list):
        if not value:
            return ""
        value = value[0]
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _parse_query(text: str) -> str | None:
    end = _QUERY_END_RE.search(text)
    if end:
        before = text[: end.start()]
        opens = list(_QUERY_OPEN_RE.finditer(before))
        if not opens:
            return None
        inner = before[opens[-1].end():].strip()
        try:
            decoded = json.loads(inner)
        except (ValueError, RecursionError):
            q = inner
        else:
            parsed = _query_from_json(decoded)
            q = inner if parsed is None else parsed
        q = q.strip()
        return q if _HAS_WORD_RE.search(q) else None
    # Unclosed <query>: accept only a well-formed JSON object with a "query" key.
    opens = list(_QUERY_OPEN_RE.finditer(text))
    if not opens:
        return None
    inner = text[opens[-1].end():].strip()
    try:
        decoded = json.loads(inner)
    except (ValueError, RecursionError):
        return None
    if not isinstance(decoded, dict) or "query" not in decoded:
        return None
    q = (_query_from_json(decoded) or "").strip()
    return q if _HAS_WORD_RE.search(q) else None


def parse_turn(text: str, n_docs_latest_block: int, select_max: int) -> ParsedAction:
    """Parse one turn's generated text.  Never raises (anything unexpected gives an invalid action)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    try:
        return _parse(text, n_docs_latest_block, select_max)
    except Exception:  # noqa: BLE001 - a model's output must never crash an episode
        return ParsedAction(truncated_text=cut_at_first_query_end(text))


def _parse(text: str, n_docs_latest_block: int, select_max: int) -> ParsedAction:
    truncated = cut_at_first_query_end(text)
    body = _THINK_BLOCK_RE.sub(" ", truncated)
    body = _THINK_TAG_RE.sub(" ", body)

    ids: list[int] = []
    has_selection = False
    content = _tag_content(body, "important_info")
    if content is not None:
        ids, has_selection = _parse_ids(content, max(0, int(n_docs_latest_block)), max(0, int(select_max)))
        if select_max <= 0:
            ids, has_selection = [], False

    complete: bool | None = None
    content = _tag_content(body, "search_complete")
    if content is not None:
        complete = _parse_complete(content)

    query = _parse_query(body)
    return ParsedAction(
        query=query,
        important_ids=ids,
        has_selection=has_selection,
        search_complete=complete,
        valid=complete is True or query is not None,
        truncated_text=truncated,
    )
