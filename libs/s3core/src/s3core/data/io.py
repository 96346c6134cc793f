"""FlashRAG-format question files and wiki-18 / DPR-style corpus files (spec §1, §7)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from s3core.errors import DataError, InvalidArgument
from s3core.types import Doc, Question

__all__ = ["corpus_sha256", "dataset_name", "iter_corpus", "load_corpus", "load_questions", "parse_contents"]

PathLike = str | os.PathLike[str]


def dataset_name(path: PathLike) -> str:
    """The file name up to its first dot: ``popqa.dev.jsonl`` → ``popqa``."""
    return Path(path).name.split(".", 1)[0]


def _check_file(path: PathLike) -> None:
    p = Path(path)
    if p.is_dir():
        raise DataError(str(path), None, "is a directory, not a file")
    if not p.exists():
        raise DataError(str(path), None, "no such file")


def _iter_json_lines(path: PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(lineno, parsed)`` for each non-blank line; bad UTF-8 or JSON raises DataError."""
    _check_file(path)
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
                raise DataError(str(path), lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None


def _scalar_str(value: Any) -> str | None:
    """A string, or a number / bool coerced to a string; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _row_id(path: PathLike, lineno: int, row: dict[str, Any]) -> str:
    if "id" not in row or row["id"] is None:
        raise DataError(str(path), lineno, "missing 'id'")
    rid = _scalar_str(row["id"])
    if rid is None or isinstance(row["id"], bool) or not rid.strip():
        raise DataError(str(path), lineno, f"'id' must be a non-empty string or number, got {row['id']!r}")
    return rid


def load_questions(path: PathLike, dataset: str | None = None, limit: int | None = None) -> list[Question]:
    """Read a FlashRAG jsonl file of ``{"id", "question", "golden_answers", "metadata"?}`` rows.

    ``dataset`` defaults to :func:`dataset_name` of ``path``; ``limit`` keeps the first N questions.
    Any malformed line raises :class:`DataError` with the file and line number.
    """
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be >= 0, got {limit}")
    ds = dataset if dataset is not None else dataset_name(path)
    out: list[Question] = []
    seen: dict[str, int] = {}
    if limit == 0:
        _check_file(path)
        return out
    for lineno, row in _iter_json_lines(path):
        if not isinstance(row, dict):
            raise DataError(str(path), lineno, f"expected a JSON object, got {type(row).__name__}")
        qid = _row_id(path, lineno, row)
        if qid in seen:
            raise DataError(str(path), lineno, f"duplicate id {qid!r} (first on line {seen[qid]})")
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            what = "missing 'question'" if question is None else "'question' must be a non-empty string"
            raise DataError(str(path), lineno, what)
        if "golden_answers" not in row or row["golden_answers"] is None:
            raise DataError(str(path), lineno, "missing 'golden_answers'")
        raw_golds = row["golden_answers"]
        if not isinstance(raw_golds, list):
            raw_golds = [raw_golds]
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
        seen[qid] = lineno
        out.append(Question(id=qid, question=question, golden_answers=tuple(golds), dataset=ds, metadata=metadata))
        if limit is not None and len(out) >= limit:
            break
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
    """Stream :class:`Doc` rows from a jsonl corpus in either layout.

    ``{"id", "contents"}`` (title on the first line) or ``{"id", "title", "text"}``; ``id`` is
    coerced to ``str``.  A malformed row raises :class:`DataError` with the file and line number.
    """
    for lineno, row in _iter_json_lines(path):
        if not isinstance(row, dict):
            raise DataError(str(path), lineno, f"expected a JSON object, got {type(row).__name__}")
        did = _row_id(path, lineno, row)
        title_v, text_v = row.get("title"), row.get("text")
        if isinstance(title_v, str) and isinstance(text_v, str):
            yield Doc(id=did, title=title_v, text=text_v)
            continue
        contents = row.get("contents")
        if isinstance(contents, str):
            title, text = parse_contents(contents)
            yield Doc(id=did, title=title, text=text)
            continue
        raise DataError(
            str(path), lineno, "row has neither a string 'contents' nor string 'title' and 'text' fields"
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
