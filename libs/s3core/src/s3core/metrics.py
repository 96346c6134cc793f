"""Answer correctness metrics (spec §4): normalisation, EM, F1, span match, judge parsing, GenAcc,
and multiple-choice scoring (the option a prediction chose, :func:`extract_choice`).

A gold that normalises to nothing (``"A"``, ``"the"``, ``"---"``: the article rule and the ASCII
punctuation rule leave no token) is **unmatchable**: it matches no prediction (EM, span) and no
document.  The spec's rule (it matched everything) made every prediction correct whenever a
multiple-choice gold letter was ``A``.  Such golds are counted (:func:`empty_golds`) and reported.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import regex

__all__ = [
    "JudgeFn",
    "answer_in_docs",
    "empty_golds",
    "exact_match",
    "f1_score",
    "gen_acc",
    "extract_choice",
    "judge_verdict",
    "mc_exact",
    "mc_gold",
    "normalize_answer",
    "parse_options",
    "span_match",
    "span_tokens",
]

JudgeFn = Callable[[str, Sequence[str]], bool]
"""A judge: ``(response, golds) -> True`` when some gold is contained in the response."""

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPAN_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")


def _as_list(golds: str | Iterable[str]) -> list[str]:
    if isinstance(golds, str):
        return [golds]
    return [str(g) for g in golds]


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, replace the words a/an/the by a space, collapse whitespace."""
    s = s.lower().translate(_PUNCT_TABLE)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, golds: str | Sequence[str]) -> bool:
    """True if any gold equals the prediction after :func:`normalize_answer`.

    A gold that normalises to nothing matches nothing (not even an empty prediction)."""
    p = normalize_answer(pred)
    return any((n := normalize_answer(g)) and n == p for g in _as_list(golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str, golds: str | Sequence[str]) -> float:
    """Token F1 on normalised, whitespace-split text; max over golds (0.0 with no golds)."""
    p = normalize_answer(pred).split()
    return max((_f1(p, normalize_answer(g).split()) for g in _as_list(golds)), default=0.0)


def span_tokens(s: str) -> list[str]:
    """Tokens used by span match: normalise, NFD, split on the spec's regex, lowercase."""
    text = unicodedata.normalize("NFD", normalize_answer(s))
    return [t.lower() for t in _SPAN_TOKEN.findall(text)]


def _contains(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return False  # a gold that normalises to nothing is unmatchable (see the module docstring)
    n = len(needle)
    first = needle[0]
    for i in range(len(haystack) - n + 1):
        if haystack[i] == first and haystack[i : i + n] == needle:
            return True
    return False


def span_match(pred: str, golds: str | Sequence[str]) -> bool:
    """True if any gold's token list is a contiguous sub-list of the prediction's tokens.

    A gold that normalises to nothing matches nothing (see :func:`empty_golds`).
    """
    p = span_tokens(pred)
    return any(_contains(p, span_tokens(g)) for g in _as_list(golds))


def empty_golds(golds: str | Sequence[str]) -> int:
    """How many golds normalise to no span tokens (and therefore can never be matched)."""
    return sum(1 for g in _as_list(golds) if not span_tokens(g))


def judge_verdict(text: str) -> bool | None:
    """Parse a judge's output: "yes" anywhere → True, else "no" anywhere → False, else None.

    Matching is by substring on the lower-cased text, as the spec states.  On None the caller
    retries once and then scores 0.
    """
    low = text.lower()
    if "yes" in low:
        return True
    if "no" in low:
        return False
    return None


def gen_acc(pred: str, golds: str | Sequence[str], judge: JudgeFn | None = None) -> tuple[bool, str]:
    """GenAcc: span match, or, only when it fails, the judge.

    Returns ``(correct, how)`` with ``how`` one of ``"span"``, ``"judge"`` or ``"none"``.
    """
    gold_list = _as_list(golds)
    if span_match(pred, gold_list):
        return True, "span"
    if judge is not None and judge(pred, gold_list):
        return True, "judge"
    return False, "none"


def answer_in_docs(golds: str | Sequence[str], docs_texts: Iterable[str]) -> bool:
    """True if any gold span-matches any of the documents' texts (for answer_recall@k)."""
    gold_tokens = [span_tokens(g) for g in _as_list(golds)]
    if not gold_tokens:
        return False
    for text in docs_texts:
        d = span_tokens(text)
        if any(_contains(d, g) for g in gold_tokens):
            return True
    return False


# --- multiple choice --------------------------------------------------------------------------------
# A multiple-choice question carries its options as an ``Options:`` block in the question text (the
# MIRAGE / s3 layout: ``stem + "\nOptions:\nA: ...\nB: ...\n"``; the loader writes one for rows that
# give options another way) and its gold as an option letter.  The prediction is right when the one
# option it chose is the gold option.  It may name the option by letter in any usual form (``B``,
# ``(B)``, ``B:``, ``B.``, ``**B**``, "the answer is B", "option B") or by the option's text; a reply
# that names two different options (``"A: no"`` when A is "yes") or none is wrong.

_OPTIONS_HEADER = re.compile(r"^\s*options\s*:?\s*$", re.IGNORECASE | re.MULTILINE)
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\)?\s*[:.)]\s*(.*?)\s*$")


def parse_options(question: str) -> dict[str, str]:
    """The options of the last ``Options:`` block of a question text, ``{letter: text}`` in order.

    The block is the lines right after an ``Options:`` line of the form ``A: text`` (also ``A.``,
    ``A)``, ``(A)``); it ends at the first other non-blank line.  Fewer than two options, or a letter
    given twice, is no block (``{}``)."""
    heads = list(_OPTIONS_HEADER.finditer(question))
    if not heads:
        return {}
    out: dict[str, str] = {}
    for line in question[heads[-1].end():].splitlines():
        if not line.strip():
            continue
        m = _OPTION_LINE.match(line)
        if m is None:
            break
        if m.group(1) in out:
            return {}
        out[m.group(1)] = m.group(2)
    return out if len(out) >= 2 else {}


def mc_gold(question: str, golds: str | Sequence[str]) -> tuple[dict[str, str], str] | None:
    """``(options, gold letter)`` when the question is multiple choice: its text has an ``Options:``
    block and every gold is one letter of it (the same one).  None otherwise."""
    letters = {g.strip().strip("()").rstrip(":.").strip() for g in _as_list(golds)}
    if len(letters) != 1:
        return None
    options = parse_options(question)
    letter = next(iter(letters))
    if not options or letter not in options:
        return None
    return options, letter


def _letter_class(letters: Iterable[str]) -> str:
    return "[" + "".join(sorted(letters)) + "]"


def _choice_patterns(letters: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[str], list[re.Pattern[str]]]:
    up = _letter_class(letters)
    anyc = _letter_class([c for x in letters for c in (x, x.lower())])
    lead_in = r"(?:(?:the\s+)?(?:correct\s+|right\s+|best\s+|final\s+)?(?:answer|option|choice)\s*(?:is|would\s+be|:|=)?\s*)?"
    # the whole reply is one letter, decorated or led in ("B", "(b)", "B.", "Answer: B", "**B**")
    bare = re.compile(rf"^[\s*\"'`]*{lead_in}(?:option\s+|choice\s+)?[\(\[]?\**\s*({anyc})\s*\**[\)\]]?\s*[:.)]?"
                      r"[\s.,;:!?*\"'`]*$",
                      re.IGNORECASE)
    # a letter marker starting the reply, then text ("B: Kidney", "(B) Kidney", "b) Kidney")
    lead = re.compile(rf"^[\s*\"'`]*{lead_in}(?:\(({anyc})\)|\[({anyc})\]|\**({up})\**\s*[:.)\]]|({anyc})\)|\**({anyc})\**\s*:)",
                      re.IGNORECASE)
    anywhere = [
        # "the answer is B", "answer: (c)", "option D", "choice b."; a lower-case letter only where it
        # cannot be the article: in brackets or followed by punctuation / the end
        re.compile(rf"\b(?:answer|option|choice)\b\s*(?:is|would\s+be|:|=)?\s*(?:option\s+|choice\s+)?"
                   rf"(?:[\(\[]\**({anyc})\**[\)\]]|\**({up})\**(?![\w'’])|({anyc})(?=\s*(?:[.,;:!)]|$)))",
                   re.IGNORECASE),
        re.compile(rf"(?<![\w(])\(({up})\)(?![\w)])"),  # "(B)" in running text, not "poly(A)tail"
        re.compile(rf"\*\*({up})\*\*"),  # "**B**"
    ]
    return bare, lead, anywhere


def _letters_named(pred: str, letters: Sequence[str]) -> tuple[set[str], str | None]:
    """Option letters the reply names, and the reply with a leading letter marker removed (None when
    the reply is nothing but a letter)."""
    bare, lead, anywhere = _choice_patterns(letters)
    text = pred.strip()
    m = bare.match(text)
    if m:
        return {m.group(1).upper()}, None
    found: set[str] = set()
    rest = text
    m = lead.match(text)
    if m:
        found.add(next(g for g in m.groups() if g).upper())
        rest = text[m.end():]
    for pat in anywhere:
        for mm in pat.finditer(text):
            found.add(next(g for g in mm.groups() if g).upper())
    return found, rest


def _raw_tokens(s: str) -> list[str]:
    """Span tokens without the punctuation and article rules (tells "Rh+ve" from "Rh-ve")."""
    return [t.lower() for t in _SPAN_TOKEN.findall(unicodedata.normalize("NFD", " ".join(s.lower().split())))]


def _texts_named(pred: str, options: dict[str, str]) -> set[str]:
    """Options whose text the reply contains (span match), without options whose text lies inside
    another named option's text ("kidney" inside "kidney stone").  Options whose texts normalise
    alike ("Rh+ve", "Rh-ve") are told apart on their raw tokens; an option whose text is one letter
    ("A: c") is not looked for (it would be a letter, not a text)."""
    p = span_tokens(pred)
    toks = {k: span_tokens(v) for k, v in options.items()}
    named = {k for k, t in toks.items() if t and not (len(t) == 1 and len(t[0]) == 1 and t[0].isalpha())
             and _contains(p, t)}
    same = {k for k in named if any(o != k and toks[o] == toks[k] for o in named)}
    if same:
        raw = _raw_tokens(pred)
        named -= {k for k in same if not _contains(raw, _raw_tokens(options[k]))}
    return {k for k in named if not any(o != k and toks[o] != toks[k] and _contains(toks[o], toks[k]) for o in named)}


def extract_choice(pred: str, options: dict[str, str]) -> str | None:
    """The one option letter ``pred`` chose, or None when it names no option or more than one.

    Letters count only in the forms listed above (a standalone "a" or "b" in running text is a word,
    not a choice); option texts count by span match."""
    if not pred.strip() or not options:
        return None
    letters, rest = _letters_named(pred, list(options))
    if rest is None:  # the reply is one letter
        return next(iter(letters)) if letters <= set(options) else None
    named = (letters & set(options)) | _texts_named(pred, options)
    if letters - set(options):
        return None  # names a letter that is no option
    return next(iter(named)) if len(named) == 1 else None


def mc_exact(pred: str, options: dict[str, str], gold: str) -> bool:
    """Multiple-choice EM: the reply is nothing but the gold option -- its letter (in any usual
    form), its text, or both (``"B: Kidney"``)."""
    if extract_choice(pred, options) != gold:
        return False
    _, rest = _letters_named(pred, list(options))
    if rest is None:
        return True
    r = normalize_answer(rest)
    return not r or r == normalize_answer(options[gold])
