"""FlashRAG-format question files and wiki-18 / DPR-style corpus files (spec §1, §7).

Both kinds of file may be JSON lines (``.jsonl``, ``.json``) or Parquet (``.parquet``, as FlashRAG's
hub copies are).  A row without ``id`` is numbered by its 0-based position in the file, as FlashRAG
does.  Bad rows raise :class:`~s3core.errors.DataError` with ``file:line`` (for Parquet, ``file:row``
with the 1-based row number).

Multiple choice (MIRAGE, FlashRAG ``choices``): a question gives its options in
``metadata.options`` (``{"A": text, ...}`` or a list), in FlashRAG's top-level ``choices`` list, or
as an ``Options:`` block of ``A: text`` lines in its text.  :func:`load_questions` (``mc="auto"``)
turns every such row into one canonical form: the question text ends with an ``Options:`` block,
``metadata.options`` holds ``{letter: text}``, and the gold is the option letter (a FlashRAG integer
gold ``1`` means ``choices[1]`` = ``B``; a gold given as the option's text or as ``"B: text"`` is
mapped to its letter).  Scoring then compares the option the prediction chose with the gold
(:func:`s3core.metrics.extract_choice`).  ``mc="off"`` keeps the rows as they are (open-text
scoring); ``mc="on"`` requires options on every row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from s3core import metrics
from s3core.errors import DataError, InvalidArgument
from s3core.types import Doc, Question

__all__ = [
    "MC_MODES",
    "corpus_sha256",
    "dataset_name",
    "iter_corpus",
    "load_corpus",
    "load_questions",
    "parse_contents",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
McMode = Literal["auto", "on", "off"]
MC_MODES = ("auto", "on", "off")
# FlashRAG's layout keeps one folder per dataset with split files in it: nq/dev.jsonl is dataset nq
SPLIT_NAMES = frozenset({"train", "dev", "test", "val", "valid", "validation", "holdout"})
PARQUET_SUFFIXES = (".parquet", ".pq")


def dataset_name(path: PathLike) -> str:
    """The file name up to its first dot (``popqa.dev.jsonl`` → ``popqa``); for a file named after
    a split (FlashRAG's ``nq/dev.jsonl`` layout) the folder's name (``nq``)."""
    p = Path(path)
    stem = p.name.split(".", 1)[0]
    if stem.lower() in SPLIT_NAMES:
        folder = p.parent.name if p.parent.name not in ("", ".", "..") else p.resolve().parent.name
        if folder:
            return folder
    return stem


def _check_file(path: PathLike) -> None:
    p = Path(path)
    if p.is_dir():
        raise DataError(str(path), None, "is a directory, not a file")
    if not p.exists():
        raise DataError(str(path), None, "no such file")


def _is_parquet(path: PathLike) -> bool:
    return str(path).lower().endswith(PARQUET_SUFFIXES)


def _iter_parquet(path: PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(row number, row as a dict)`` (1-based) of a Parquet file, batch by batch."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a pinned dependency
        raise DataError(str(path), None, "reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(str(path), None, f"not a readable Parquet file ({exc})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _iter_rows(path: PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(lineno, parsed)`` for each non-blank line (or each Parquet row); bad UTF-8 or JSON
    raises DataError."""
    _check_file(path)
    if _is_parquet(path):
        yield from _iter_parquet(path)
        return
    with Path(path).open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(str(path), lineno, f"not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                hint = " (a Parquet file? name it .parquet)" if lineno == 1 and raw[:4] == b"PAR1" else ""
                raise DataError(str(path), lineno, f"invalid JSON: {exc.msg} (column {exc.colno}){hint}") from None


_iter_json_lines = _iter_rows  # the old name


def _scalar_str(value: Any) -> str | None:
    """A string, or a number / bool coerced to a string; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _row_id(path: PathLike, lineno: int, row: dict[str, Any], position: int) -> str:
    """The row's id; a row without one (absent or null) gets its 0-based position in the file."""
    if "id" not in row or row["id"] is None:
        return str(position)
    rid = _scalar_str(row["id"])
    if rid is None or isinstance(row["id"], bool) or not rid.strip():
        raise DataError(str(path), lineno, f"'id' must be a non-empty string or number, got {row['id']!r}")
    return rid


# --- multiple choice ---------------------------------------------------------------------------------

def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _row_options(path: PathLike, lineno: int, row: dict[str, Any], metadata: dict[str, Any],
                 question: str) -> tuple[dict[str, str], str]:
    """``(options, where they came from)``; ``({}, "")`` when the row gives none."""
    def as_options(value: Any, what: str) -> dict[str, str]:
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            if len(value) > 26:
                raise DataError(str(path), lineno, f"{what} has {len(value)} options (at most 26)")
            items = list(zip(_letters(len(value)), value))
        else:
            raise DataError(str(path), lineno, f"{what} must be a list or an object, got {type(value).__name__}")
        out: dict[str, str] = {}
        for k, v in items:
            key = str(k).strip().upper()
            text = _scalar_str(v)
            if len(key) != 1 or not ("A" <= key <= "Z") or text is None:
                raise DataError(str(path), lineno, f"{what}: option {k!r}: {v!r} is not a letter with a text")
            out[key] = text
        if len(out) < 2:
            raise DataError(str(path), lineno, f"{what} has fewer than two options")
        return out

    if row.get("choices") not in (None, [], ()):
        return as_options(row["choices"], "'choices'"), "choices"
    if metadata.get("options") not in (None, [], {}):
        return as_options(metadata["options"], "'metadata.options'"), "metadata.options"
    parsed = metrics.parse_options(question)
    return (parsed, "Options: block") if parsed else ({}, "")


def _mc_gold(path: PathLike, lineno: int, raw_golds: list[Any], options: dict[str, str], from_choices: bool) -> str:
    """The one option letter the row's golds name."""
    letters: set[str] = set()
    by_text = {metrics.normalize_answer(t): k for k, t in options.items() if metrics.normalize_answer(t)}
    for g in raw_golds:
        letter: str | None = None
        if isinstance(g, int) and not isinstance(g, bool):
            if from_choices:  # FlashRAG: an integer gold is an index into choices
                if 0 <= g < len(options):
                    letter = _letters(len(options))[g]
            elif 0 <= g < len(options):
                letter = list(options)[g]
        elif isinstance(g, str):
            s = g.strip()
            key = s.strip("()").rstrip(":.").strip()
            if key in options:
                letter = key
            elif len(s) >= 2 and s[0] in options and s[1] in ":.)" and (
                    metrics.normalize_answer(s[2:]) == metrics.normalize_answer(options[s[0]])):
                letter = s[0]  # "B: text"
            else:
                letter = by_text.get(metrics.normalize_answer(s))
        if letter is None:
            raise DataError(str(path), lineno, f"gold answer {g!r} is not one of the options "
                            f"{', '.join(options)} (by letter, index or text); give --mc off to score it as text")
        letters.add(letter)
    if len(letters) != 1:
        raise DataError(str(path), lineno, f"the gold answers name {len(letters)} different options "
                        f"({', '.join(sorted(letters))}); a multiple-choice row needs exactly one")
    return next(iter(letters))


def _options_block(options: dict[str, str]) -> str:
    return "Options:\n" + "".join(f"{k}: {' '.join(v.split())}\n" for k, v in options.items())


def load_questions(path: PathLike, dataset: str | None = None, limit: int | None = None, *,
                   mc: McMode = "auto", sample: int | None = None, seed: int = 0) -> list[Question]:
    """Read a FlashRAG question file (jsonl or Parquet) of ``{"id"?, "question", "golden_answers",
    "metadata"?, "choices"?}`` rows.

    ``dataset`` defaults to :func:`dataset_name` of ``path``; ``limit`` keeps the first N questions;
    ``sample`` keeps N questions drawn at random with ``seed`` (in file order; the same seed draws
    the same questions).  ``mc`` is the multiple-choice mode (module docstring).  Any malformed line
    raises :class:`DataError` with the file and line number.  Golds that normalise to nothing
    (``"---"``) can never match (:mod:`s3core.metrics`); they are logged with their line here and
    counted in the results.
    """
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be >= 0, got {limit}")
    if sample is not None and sample < 1:
        raise InvalidArgument(f"sample must be >= 1, got {sample}")
    if sample is not None and limit:
        raise InvalidArgument("give either a limit (the first N questions) or a sample (N at random), not both")
    if mc not in MC_MODES:
        raise InvalidArgument(f"mc must be one of {', '.join(MC_MODES)}, got {mc!r}")
    ds = dataset if dataset is not None else dataset_name(path)
    out: list[Question] = []
    seen: dict[str, int] = {}
    unmatchable: dict[str, int] = {}  # question id -> line
    if limit == 0:
        _check_file(path)
        return out
    for position, (lineno, row) in enumerate(_iter_rows(path)):
        if not isinstance(row, dict):
            raise DataError(str(path), lineno, f"expected a JSON object, got {type(row).__name__}")
        qid = _row_id(path, lineno, row, position)
        if qid in seen:
            raise DataError(str(path), lineno, f"duplicate id {qid!r} (first on line {seen[qid]})")
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            what = "missing 'question'" if question is None else "'question' must be a non-empty string"
            raise DataError(str(path), lineno, what)
        if "golden_answers" not in row or row["golden_answers"] is None:
            raise DataError(str(path), lineno, "missing 'golden_answers'")
        raw_golds = row["golden_answers"]
        if not isinstance(raw_golds, (list, tuple)):
            raw_golds = [raw_golds]
        raw_golds = list(raw_golds)
        golds: list[str] = []
        for g in raw_golds:
            s = _scalar_str(g)
            if s is None:
                raise DataError(str(path), lineno, f"'golden_answers' entries must be strings or numbers, got {g!r}")
            golds.append(s)
        if not golds:
            raise DataError(str(path), lineno, "'golden_answers' is empty")
        metadata = row.get("metadata")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            raise DataError(str(path), lineno, f"'metadata' must be an object, got {type(metadata).__name__}")
        if mc != "off":
            options, source = _row_options(path, lineno, row, metadata, question)
            if options:
                letter = _mc_gold(path, lineno, raw_golds, options, source == "choices")
                if not metrics.parse_options(question):
                    question = question.rstrip() + "\n" + _options_block(options)
                metadata = {**metadata, "options": options}
                if golds != [letter]:
                    metadata["golden_answers_given"] = golds
                golds = [letter]
            elif mc == "on":
                raise DataError(str(path), lineno, "no options (metadata.options, 'choices' or an 'Options:' block) "
                                "but --mc on needs a multiple-choice row")
            elif metrics.empty_golds(golds):
                unmatchable[qid] = lineno
        elif metrics.empty_golds(golds):
            unmatchable[qid] = lineno
        seen[qid] = lineno
        out.append(Question(id=qid, question=question, golden_answers=tuple(golds), dataset=ds, metadata=metadata))
        if limit is not None and len(out) >= limit:
            break
    if sample is not None and sample < len(out):
        keep = sorted(random.Random(seed).sample(range(len(out)), sample))
        out = [out[i] for i in keep]
    lines = [unmatchable[q.id] for q in out if q.id in unmatchable]
    if lines:
        where = ", ".join(f"{path}:{n}" for n in lines[:5]) + (" ..." if len(lines) > 5 else "")
        logger.warning("%d question(s) have a gold answer that normalises to nothing (it can never match; "
                       "counted as empty_golds in the results): %s", len(lines), where)
    return out


def _strip_quotes(title: str) -> str:
    title = title.strip()
    if len(title) >= 2 and title[0] == '"' and title[-1] == '"':
        return title[1:-1]
    return title


def parse_contents(contents: str) -> tuple[str, str]:
    """Split a wiki-18 ``contents`` field into ``(title, text)``.

    The first line is the title (surrounding double quotes removed), the rest is the text.  A
    single-line value is a title only when quoted; otherwise it is text with an empty title.
    """
    first, sep, rest = contents.partition("\n")
    if sep:
        return _strip_quotes(first), rest.strip()
    stripped = contents.strip()
    if len(stripped) >= 2 and stripped[0] == '"' and stripped[-1] == '"':
        return stripped[1:-1], ""
    return "", stripped


def iter_corpus(path: PathLike) -> Iterator[Doc]:
    """Stream :class:`Doc` rows from a corpus file (jsonl or Parquet) in any FlashRAG layout.

    ``{"id", "contents"}`` (title on the first line), ``{"id", "title", "text"}`` or ``{"id",
    "text"}`` (no title); ``id`` is coerced to ``str``, and a row without one is numbered by its
    0-based position.  A malformed row raises :class:`DataError` with the file and line number.
    """
    for position, (lineno, row) in enumerate(_iter_rows(path)):
        if not isinstance(row, dict):
            raise DataError(str(path), lineno, f"expected a JSON object, got {type(row).__name__}")
        did = _row_id(path, lineno, row, position)
        title_v, text_v = row.get("title"), row.get("text")
        if isinstance(title_v, str) and isinstance(text_v, str):
            yield Doc(id=did, title=title_v, text=text_v)
            continue
        contents = row.get("contents")
        if isinstance(contents, str):
            title, text = parse_contents(contents)
            yield Doc(id=did, title=title, text=text)
            continue
        if isinstance(text_v, str) and title_v is None:
            yield Doc(id=did, title="", text=text_v)
            continue
        raise DataError(
            str(path), lineno, "row has neither a string 'contents' nor a string 'text' (with an optional string 'title')"
        )


def load_corpus(path: PathLike) -> list[Doc]:
    """All rows of :func:`iter_corpus` as a list."""
    return list(iter_corpus(path))


def corpus_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks."""
    _check_file(path)
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
