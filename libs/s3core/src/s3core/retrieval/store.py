"""The document store of an index directory: ids, titles and texts, fetched by row or by id.

Files (all written by :class:`DocStoreWriter`):

* ``docs.jsonl`` -- one ``[id, title, text]`` JSON array per line, in index row order;
* ``docs.offsets.npy`` -- int64 byte offsets of each line (``n + 1`` entries);
* ``docs.ids.json`` -- the ids as one JSON list (loads in milliseconds for ~33k docs).

``docs.jsonl`` is memory-mapped: loading costs the id list only, and a document is decoded when it
is asked for.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from s3core.errors import InvalidArgument, NotFound
from s3core.types import Doc

DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"
IDS_FILE = "docs.ids.json"
STORE_FILES = (DOCS_FILE, OFFSETS_FILE, IDS_FILE)


class DocStoreWriter:
    """Streams documents into ``out_dir``; call :meth:`close` to write the offsets and ids."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fh = (self.dir / DOCS_FILE).open("wb")
        self._offsets = array("q", [0])
        self._ids: list[str] = []
        self._seen: dict[str, int] = {}

    def add(self, doc: Doc) -> int:
        """Append one document; returns its row.  A repeated id raises ``InvalidArgument``."""
        row = len(self._ids)
        first = self._seen.setdefault(doc.id, row)
        if first != row:
            raise InvalidArgument(f"duplicate document id {doc.id!r} (documents #{first + 1} and #{row + 1})")
        line = json.dumps([doc.id, doc.title, doc.text], ensure_ascii=False).encode("utf-8") + b"\n"
        self._fh.write(line)
        self._offsets.append(self._offsets[-1] + len(line))
        self._ids.append(doc.id)
        return row

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> int:
        """Flush everything; returns the number of documents."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            np.save(self.dir / OFFSETS_FILE, np.frombuffer(self._offsets, dtype=np.int64))
            with (self.dir / IDS_FILE).open("w", encoding="utf-8") as fh:
                json.dump(self._ids, fh, ensure_ascii=False)
        return len(self._ids)

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def write_store(out_dir: str | os.PathLike[str], docs: Iterable[Doc]) -> int:
    w = DocStoreWriter(out_dir)
    try:
        for d in docs:
            w.add(d)
    except BaseException:
        w.abort()
        raise
    return w.close()


class DocStore:
    """Read side: ``doc(row)``, ``docs(rows, scores)`` and ``get(ids)``; safe across threads."""

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(index_dir)
        missing = [f for f in STORE_FILES if not (self.dir / f).is_file()]
        if missing:
            raise InvalidArgument(f"{self.dir}: document store incomplete, missing {', '.join(missing)}")
        try:
            self._offsets = np.load(self.dir / OFFSETS_FILE, allow_pickle=False)
            with (self.dir / IDS_FILE).open("r", encoding="utf-8") as fh:
                self.ids: list[str] = json.load(fh)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"{self.dir}: document store is corrupt: {exc}") from None
        n = len(self.ids)
        if self._offsets.ndim != 1 or len(self._offsets) != n + 1:
            raise InvalidArgument(f"{self.dir}: document store is corrupt: {n} ids but {len(self._offsets) - 1} offsets")
        size = (self.dir / DOCS_FILE).stat().st_size
        if int(self._offsets[-1]) != size:
            raise InvalidArgument(
                f"{self.dir}: document store is corrupt: {DOCS_FILE} has {size} bytes, offsets say {int(self._offsets[-1])}"
            )
        self._fh = (self.dir / DOCS_FILE).open("rb")
        self._mm: mmap.mmap | bytes = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._row_of: dict[str, int] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def _decode(self, start: int, end: int, score: float) -> Doc:
        did, title, text = json.loads(self._mm[start:end])
        return Doc(id=did, title=title, text=text, score=score)

    def doc(self, row: int, score: float = 0.0) -> Doc:
        if not 0 <= row < len(self.ids):
            raise IndexError(f"row {row} out of range (0..{len(self.ids) - 1})")
        return self._decode(int(self._offsets[row]), int(self._offsets[row + 1]), float(score))

    def docs(self, rows: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray | None = None) -> list[Doc]:
        """Documents of ``rows`` (in that order), with ``scores`` attached when given."""
        r = np.asarray(rows, dtype=np.int64)
        starts = self._offsets[r].tolist()
        ends = self._offsets[r + 1].tolist()
        sc = [0.0] * len(starts) if scores is None else np.asarray(scores, dtype=np.float64).tolist()
        return [self._decode(s, e, x) for s, e, x in zip(starts, ends, sc)]

    def row_of(self, doc_id: str) -> int | None:
        if self._row_of is None:
            with self._lock:
                if self._row_of is None:
                    self._row_of = {d: i for i, d in enumerate(self.ids)}
        return self._row_of.get(doc_id)

    def get(self, ids: Sequence[str]) -> list[Doc]:
        rows: list[int] = []
        missing: list[str] = []
        for did in ids:
            row = self.row_of(did)
            if row is None:
                missing.append(did)
            else:
                rows.append(row)
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise NotFound(f"no document with id {', '.join(map(repr, missing[:5]))}{more}")
        return self.docs(rows)

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        self._fh.close()
