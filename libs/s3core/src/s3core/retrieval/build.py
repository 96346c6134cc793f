"""Streaming, resumable, bounded-memory dense index builds, optionally sharded by passage range.

A build of ``<out>`` keeps its state in a work directory ``<out>.partial/`` that survives a kill::

    <out>.partial/state.json            what is being built: corpus sha256, encoder, embedding
                                        settings, chunk size (a rerun must match, or --restart)
    <out>.partial/chunks/chunk-000012/  one finished chunk: vectors.npy (float32, rows × dim) and its
                                        part of the document store (docs.jsonl / offsets / ids);
                                        written under a temp name and renamed when complete
    <out>.partial/index/                the index phase: index.json (its parameters), trained.faiss
                                        (the trained empty index), out/ (the finished tree; sharded:
                                        one finished shard-*/ directory at a time)

1. **embed**: the corpus is read as a stream, ``chunk_size`` passages at a time; a chunk already
   on disk (from an interrupted run of the same command) is skipped, any other is embedded and
   checkpointed.  Document ids are checked for duplicates across the whole corpus as it streams.
2. **train** (IVF / PQ / SQ8 types): on a seeded sample of ``train_size`` rows gathered from the
   chunk files.
3. **add**: chunk by chunk into each shard's index (memory: one chunk plus the index itself); the
   document stores are concatenated from the chunk parts without re-encoding.
4. the finished tree is renamed onto ``<out>`` (an older index there is replaced only then) and the
   work directory is removed.

A rerun after a kill resumes at the first missing chunk (or, if every chunk is done, at the index
phase, keeping a trained index and finished shards when the index parameters did not change).
Changing the corpus or the embedding settings between runs is refused with a message saying how
to start over; changing only the index parameters (type, nlist, shards, ...) reuses the embedded
chunks.  A corpus error (malformed line, duplicate id) removes the work directory: the corpus must
change, so its chunks cannot be reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from s3core.errors import DataError, InvalidArgument
from s3core.io import _host_tag, sweep_stale_dirs, write_json
from s3core.retrieval import ann
from s3core.retrieval.store import DOCS_FILE, IDS_FILE, OFFSETS_FILE, DocStoreWriter
from s3core.types import Doc

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 50_000
WORK_SUFFIX = ".partial"
STATE_FILE = "state.json"
SHARDS_FILE = "shards.json"
VECTORS_FILE = "vectors.npy"
CHUNK_META = "chunk.json"
LOCK_FILE = ".lock"
WORK_FORMAT = 1
TRAIN_SEED = 0
FAISS_FILE = "faiss.index"  # = dense.FAISS_FILE (dense imports torch lazily; keep this module light)
MANIFEST = "manifest.json"  # = index.MANIFEST


# --- small helpers -----------------------------------------------------------------------------------

def work_dir_for(out_dir: str | os.PathLike[str]) -> Path:
    """The persistent work directory of a build of ``out_dir``: ``<out>.partial``."""
    out = Path(out_dir)
    return out.with_name(out.name + WORK_SUFFIX)


def shard_dir_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def shard_ranges(n: int, count: int) -> list[tuple[int, int]]:
    """Contiguous ``[row_start, row_end)`` ranges splitting ``n`` rows into ``count`` near-equal parts."""
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


def shard_set_id(corpus_sha256: str, backend: str, encoder: str, params: dict[str, Any], count: int) -> str:
    """Hex sha256 naming a shard set: corpus sha256 + backend + encoder + index params (+ shard count),
    over canonical JSON (``sort_keys``), so every shard of one build carries the same id."""
    blob = json.dumps({"corpus_sha256": corpus_sha256, "backend": backend, "encoder": encoder,
                       "params": params, "count": count}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def scan_corpus(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``(sha256 hex, number of lines)`` of a corpus file, in one streaming pass."""
    p = Path(path)
    if p.is_dir():
        raise DataError(str(path), None, "is a directory, not a file")
    if not p.exists():
        raise DataError(str(path), None, "no such file")
    h = hashlib.sha256()
    lines = 0
    last = b"\n"
    with p.open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    return h.hexdigest(), lines + (last != b"\n")


def _fsync_save(path: Path, arr: np.ndarray) -> None:
    with path.open("wb") as fh:
        np.save(fh, arr, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _write_faiss(index: Any, path: Path) -> None:
    """``faiss.write_index`` to a temp name, fsync, rename (no in-memory copy of a large index)."""
    import faiss

    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _swap_into_place(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is removed only after the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{_host_tag()}-{os.getpid()}")  # swept if we die here
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _id_hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids),
        dtype=np.uint64, count=len(ids),
    )


# --- chunks ----------------------------------------------------------------------------------------

class ChunkStore:
    """The embedded chunks of a work directory (``chunks/chunk-NNNNNN/``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".chunk-*.tmp"):  # a chunk being written when the last run died
            shutil.rmtree(stale, ignore_errors=True)

    def dir(self, i: int) -> Path:
        return self.root / f"chunk-{i:06d}"

    def meta(self, i: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir(i) / CHUNK_META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def matches(self, i: int, row_start: int, ids: list[str], dim: int) -> bool:
        """Is chunk ``i`` on disk, complete, and made of exactly these documents?"""
        m = self.meta(i)
        if not m or (m.get("row_start"), m.get("rows"), m.get("first_id"), m.get("last_id"), m.get("dim")) != (
                row_start, len(ids), ids[0], ids[-1], dim):
            return False
        try:
            v = np.load(self.dir(i) / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        return v.shape == (len(ids), dim) and v.dtype == np.float32

    def write(self, i: int, row_start: int, docs: list[Doc], vectors: np.ndarray) -> None:
        tmp = self.root / f".chunk-{i:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        final = self.dir(i)
        shutil.rmtree(final, ignore_errors=True)
        writer = DocStoreWriter(tmp)
        for d in docs:
            writer.add(d)
        writer.close()
        _fsync_save(tmp / VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float32))
        write_json(tmp / CHUNK_META, {"chunk": i, "row_start": row_start, "rows": len(docs), "dim": int(vectors.shape[1]),
                                      "first_id": docs[0].id, "last_id": docs[-1].id})
        os.replace(tmp, final)

    def vectors(self, i: int) -> np.ndarray:
        return np.load(self.dir(i) / VECTORS_FILE, mmap_mode="r", allow_pickle=False)

    def find_id(self, doc_id: str, before: int) -> int | None:
        """Global row of ``doc_id`` in chunks ``0..before-1`` (the slow path of duplicate detection)."""
        for i in range(before):
            ids = json.loads((self.dir(i) / IDS_FILE).read_text(encoding="utf-8"))
            if doc_id in ids:
                return int(self.meta(i)["row_start"]) + ids.index(doc_id)  # type: ignore[index]
        return None


class _SeenIds:
    """64-bit hashes of every id so far, sorted (21M ids: 168 MB), to catch duplicates across chunks."""

    def __init__(self) -> None:
        self.sorted = np.empty(0, dtype=np.uint64)

    def add_chunk(self, ids: list[str], row_start: int, chunk: int, store: ChunkStore) -> None:
        first: dict[str, int] = {}
        for j, did in enumerate(ids):
            k = first.setdefault(did, j)
            if k != j:
                raise InvalidArgument(f"duplicate document id {did!r} (documents #{row_start + k + 1} and "
                                      f"#{row_start + j + 1})")
        h = _id_hashes(ids)
        if len(self.sorted):
            pos = np.searchsorted(self.sorted, h).clip(max=len(self.sorted) - 1)
            for j in np.flatnonzero(self.sorted[pos] == h):
                earlier = store.find_id(ids[j], chunk)
                if earlier is not None:  # else a 64-bit hash collision of two different ids
                    raise InvalidArgument(f"duplicate document id {ids[j]!r} (documents #{earlier + 1} and "
                                          f"#{row_start + int(j) + 1})")
        self.sorted = np.sort(np.concatenate([self.sorted, np.sort(h)]), kind="stable")


def embed_chunks(docs: Iterable[Doc], store: ChunkStore, enc: Any, chunk_size: int,
                 bar: Any) -> tuple[int, int, int]:
    """Stream ``docs`` into chunks, embedding and checkpointing the ones not on disk yet.

    Returns ``(documents, chunks reused, chunks embedded)``."""
    from s3core.retrieval.bm25 import doc_text

    it: Iterator[Doc] = iter(docs)
    seen = _SeenIds()
    row = reused = embedded = 0
    i = 0
    sub = max(enc.batch_size * 16, 256)
    while chunk := list(islice(it, chunk_size)):
        ids = [d.id for d in chunk]
        seen.add_chunk(ids, row, i, store)
        if store.matches(i, row, ids, enc.dim):
            reused += 1
            bar.update(len(chunk))
        else:
            if store.meta(i) is not None:
                logger.warning("chunk %d in %s does not match the corpus; embedding it again", i, store.root)
            t0 = time.perf_counter()
            parts = []
            for s in range(0, len(chunk), sub):
                parts.append(enc.encode([doc_text(d) for d in chunk[s:s + sub]], enc.passage_prefix))
                bar.update(len(parts[-1]))
            store.write(i, row, chunk, np.concatenate(parts))
            embedded += 1
            logger.info("embedded chunk %d (rows %d..%d) in %.1fs", i, row, row + len(chunk) - 1,
                        time.perf_counter() - t0)
        row += len(chunk)
        i += 1
    for extra in sorted(store.root.glob("chunk-*")):  # chunks past the end (cannot happen for a same-sha corpus)
        if int(extra.name.split("-")[1]) >= i:
            shutil.rmtree(extra, ignore_errors=True)
    return row, reused, embedded


# --- index phase -----------------------------------------------------------------------------------

def _chunk_spans(a: int, b: int, chunk_size: int) -> Iterator[tuple[int, int, int]]:
    """``(chunk, lo, hi)`` local row spans covering global rows ``[a, b)``."""
    c = a // chunk_size
    while c * chunk_size < b:
        lo = max(a, c * chunk_size) - c * chunk_size
        hi = min(b, (c + 1) * chunk_size) - c * chunk_size
        yield c, lo, hi
        c += 1


def sample_rows(n: int, size: int, seed: int = TRAIN_SEED) -> np.ndarray:
    """Sorted row numbers of a seeded uniform sample of ``size`` rows out of ``n``."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def gather_rows(store: ChunkStore, rows: np.ndarray, chunk_size: int, dim: int) -> np.ndarray:
    out = np.empty((len(rows), dim), dtype=np.float32)
    chunk_of = rows // chunk_size
    for c in np.unique(chunk_of):
        sel = np.flatnonzero(chunk_of == c)
        out[sel] = store.vectors(int(c))[rows[sel] - c * chunk_size]
    return out


class _StoreConcat:
    """Writes a document store (the :mod:`s3core.retrieval.store` format) by concatenating row ranges
    of chunk stores: bytes are copied, offsets shifted, ids streamed; memory is one chunk's ids."""

    def __init__(self, out: Path, rows: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._docs = (out / DOCS_FILE).open("wb")
        self._ids = (out / IDS_FILE).open("w", encoding="utf-8")
        self._ids.write("[")
        self._offsets = np.lib.format.open_memmap(out / OFFSETS_FILE, mode="w+", dtype=np.int64, shape=(rows + 1,))
        self._offsets[0] = 0
        self._n = 0
        self._pos = 0

    def append(self, chunk_dir: Path, lo: int, hi: int) -> None:
        offs = np.load(chunk_dir / OFFSETS_FILE, allow_pickle=False)
        start, end = int(offs[lo]), int(offs[hi])
        with (chunk_dir / DOCS_FILE).open("rb") as src:
            src.seek(start)
            left = end - start
            while left > 0:
                block = src.read(min(left, 1 << 22))
                if not block:
                    raise InvalidArgument(f"{chunk_dir / DOCS_FILE} is shorter than its offsets say")
                self._docs.write(block)
                left -= len(block)
        self._offsets[self._n + 1:self._n + 1 + hi - lo] = offs[lo + 1:hi + 1] - start + self._pos
        ids = json.loads((chunk_dir / IDS_FILE).read_text(encoding="utf-8"))[lo:hi]
        text = ", ".join(json.dumps(i, ensure_ascii=False) for i in ids)
        self._ids.write((", " if self._n else "") + text)
        self._n += hi - lo
        self._pos += end - start

    def close(self) -> int:
        self._ids.write("]")
        for fh in (self._docs, self._ids):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        self._offsets.flush()
        del self._offsets
        return self._n


def _new_shard_index(p: dict[str, Any], dim: int, trained: Path | None) -> Any:
    import faiss

    if trained is not None:
        index = faiss.read_index(str(trained))
        ann.apply_search_params(index, p)
        return index
    return ann.new_index(p, dim)


def write_index_dir(tmp: Path, store: ChunkStore, p: dict[str, Any], dim: int, trained: Path | None,
                    a: int, b: int, chunk_size: int, bar: Any) -> None:
    """Fill ``tmp`` with ``faiss.index`` + the document store of global rows ``[a, b)``."""

    index = _new_shard_index(p, dim, trained)
    docs = _StoreConcat(tmp, b - a)
    for c, lo, hi in _chunk_spans(a, b, chunk_size):
        index.add(np.ascontiguousarray(store.vectors(c)[lo:hi], dtype=np.float32))
        docs.append(store.dir(c), lo, hi)
        bar.update(hi - lo)
    n = docs.close()
    if n != b - a or int(index.ntotal) != b - a:
        raise InvalidArgument(f"internal error: rows {a}..{b} gave {n} documents and {index.ntotal} vectors")
    _write_faiss(index, tmp / FAISS_FILE)


def train_index(store: ChunkStore, p: dict[str, Any], dim: int, n: int, chunk_size: int, path: Path) -> None:
    """Train an empty index on a seeded sample of the chunk vectors; write it to ``path`` atomically."""

    t0 = time.perf_counter()
    rows = sample_rows(n, int(p["train_size"]))
    sample = gather_rows(store, rows, chunk_size, dim)
    index = ann.new_index(p, dim)
    logger.info("training %s on %d of %d vectors (dim %d)", p["factory"], len(rows), n, dim)
    ann.train(index, sample)
    del sample
    _write_faiss(index, path)
    logger.info("trained %s in %.1fs", p["factory"], time.perf_counter() - t0)


# --- the builds ------------------------------------------------------------------------------------

def split_params(params: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(encoder params, index params)`` of a dense params dict; unknown keys raise InvalidArgument."""
    from s3core.retrieval.dense import ENCODER_PARAMS

    given = dict(params or {})
    unknown = set(given) - set(ENCODER_PARAMS) - set(ann.ANN_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown dense parameter(s): {', '.join(sorted(unknown))} "
                              f"(known: {', '.join((*ENCODER_PARAMS, *ann.ANN_KEYS))})")
    return ({k: v for k, v in given.items() if k in ENCODER_PARAMS},
            {k: v for k, v in given.items() if k in ann.ANN_KEYS})


def _check_chunk_size(chunk_size: int | None) -> int:
    cs = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if isinstance(cs, bool) or not isinstance(cs, int) or cs < 1:
        raise InvalidArgument(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return cs


def _full_params(enc_p: dict[str, Any], ann_p: dict[str, Any], dim: int) -> dict[str, Any]:
    return {**enc_p, **ann_p, "dim": dim, "metric": "inner_product", "normalized": True, "fields": "title+text"}


def build_dense_dir(docs: Iterable[Doc], out_dir: str | os.PathLike[str], *, encoder: str,
                    params: dict[str, Any] | None = None, threads: int = 0, show_progress: bool = True,
                    chunk_size: int | None = None) -> tuple[int, dict[str, Any]]:
    """Embed ``docs`` and write ``faiss.index`` + the document store into ``out_dir`` (not resumable:
    its chunk files live in ``out_dir/.chunks`` and are removed at the end).  ``(documents, params)``."""
    from s3core.retrieval.dense import prepare_encoder

    cs = _check_chunk_size(chunk_size)
    enc_given, ann_given = split_params(params)
    ann.check_ann_params(ann_given)
    enc, enc_p = prepare_encoder(encoder, enc_given, threads)
    ann.check_ann_params(ann_given, enc.dim)
    out = Path(out_dir)
    work = out / ".chunks"
    shutil.rmtree(work, ignore_errors=True)
    store = ChunkStore(work)
    try:
        with tqdm(desc="dense: embed", unit="doc", disable=not show_progress) as bar:
            n, _, _ = embed_chunks(docs, store, enc, cs, bar)
        if n == 0:
            raise InvalidArgument("the corpus has no documents")
        ann_p = ann.resolve_ann_params(ann_given, enc.dim, n)
        trained = None
        if ann.needs_training(ann_p["index_type"]):
            trained = work / "trained.faiss"
            train_index(store, ann_p, enc.dim, n, cs, trained)
        with tqdm(desc="dense: add", unit="vec", total=n, disable=not show_progress) as bar:
            write_index_dir(out, store, ann_p, enc.dim, trained, 0, n, cs, bar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return n, _full_params(enc_p, ann_p, enc.dim)


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    work.mkdir(parents=True, exist_ok=True)
    with (work / LOCK_FILE).open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            raise InvalidArgument(f"another build is using {work} (pid {fh.read().strip() or '?'}); "
                                  "wait for it or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield


def _describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            a, b = old.get(k), new.get(k)
            if k == "corpus_sha256":
                a, b = str(a)[:12] + "…", str(b)[:12] + "…"
            parts.append(f"{k}: {a!r} then, {b!r} now")
    return "; ".join(parts)


def _prepare_work(work: Path, identity: dict[str, Any], restart: bool) -> bool:
    """Check (or start) the work directory; True when it holds an earlier run of the same build."""
    state_path = work / STATE_FILE
    if restart:
        for child in work.iterdir():
            if child.name != LOCK_FILE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    resumed = state_path.is_file()
    if resumed:
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"{state_path} is unreadable ({exc}); delete {work} or pass --restart") from None
        old = state.get("identity") if isinstance(state, dict) else None
        if old != identity:
            diff = _describe_diff(old if isinstance(old, dict) else {}, identity)
            raise InvalidArgument(
                f"{work} holds an interrupted build of a different corpus or embedding settings ({diff}); "
                f"delete {work} or pass --restart to start over"
            )
    elif any(c.name not in (LOCK_FILE,) for c in work.iterdir()):
        raise InvalidArgument(f"{work} exists but is not a build work directory (no {STATE_FILE}); "
                              "delete it or pass --restart")
    else:
        write_json(state_path, {"work_format": WORK_FORMAT, "identity": identity,
                                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return resumed


def build_dense_index(
    corpus_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base_manifest: dict[str, Any],
    encoder: str,
    params: dict[str, Any] | None = None,
    limit: int | None = None,
    threads: int = 0,
    show_progress: bool = True,
    chunk_size: int | None = None,
    shards: int = 1,
    restart: bool = False,
    corpus_sha256: str | None = None,
    corpus_lines: int | None = None,
) -> dict[str, Any]:
    """The resumable build of a dense index of a corpus file (see the module docstring).

    ``base_manifest`` holds the manifest fields that are not the build's (format_version, name,
    backend, corpus_path, corpus_sha256, encoder, created_at, s3core_version).  Returns the manifest
    written (unsharded) or the content of ``shards.json`` (``shards`` > 1).
    """
    from s3core.data import iter_corpus
    from s3core.retrieval.dense import prepare_encoder

    t_start = time.perf_counter()
    cs = _check_chunk_size(chunk_size)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise InvalidArgument(f"shards must be an integer >= 1, got {shards!r}")
    enc_given, ann_given = split_params(params)
    ann.check_ann_params(ann_given)
    corpus = Path(corpus_path)
    if corpus_sha256 is None or corpus_lines is None:
        corpus_sha256, corpus_lines = scan_corpus(corpus)
    enc, enc_p = prepare_encoder(encoder, enc_given, threads)
    dim = enc.dim
    n_max = corpus_lines if limit is None else min(limit, corpus_lines)
    if n_max < 1:
        raise InvalidArgument("the corpus has no documents")
    # fail on index parameters before hours of embedding (n_max >= the real count: blank lines)
    ann.resolve_ann_params(ann_given, dim, n_max)
    if shards > n_max:
        raise InvalidArgument(f"cannot split a corpus of at most {n_max} documents into {shards} shards")

    out = Path(out_dir)
    sweep_stale_dirs(out)  # what killed builds left next to it (a replaced index caught mid-swap)
    work = work_dir_for(out)
    identity = {"corpus_sha256": corpus_sha256, "encoder": encoder, "limit": limit, "chunk_size": cs,
                **{k: enc_p[k] for k in ("query_prefix", "passage_prefix", "batch_size", "max_seq_length")}}
    existed = work.exists()
    with _locked(work):
        try:
            resumed = _prepare_work(work, identity, restart)
        except BaseException:
            if not existed:
                shutil.rmtree(work, ignore_errors=True)
            raise
        if resumed:
            logger.warning("resuming the interrupted build in %s", work)
        store = ChunkStore(work / "chunks")
        t0 = time.perf_counter()
        docs: Iterable[Doc] = iter_corpus(corpus)
        if limit is not None:
            docs = islice(docs, limit)
        try:
            with tqdm(desc="dense: embed", unit="doc", total=n_max, disable=not show_progress) as bar:
                n, reused, embedded = embed_chunks(docs, store, enc, cs, bar)
            if n == 0:
                raise InvalidArgument("the corpus has no documents")
        except InvalidArgument:
            # the corpus itself is wrong (malformed line, duplicate id, empty): it has to change, so
            # nothing here can be reused
            shutil.rmtree(work, ignore_errors=True)
            raise
        embed_s = time.perf_counter() - t0
        if reused:
            logger.warning("reused %d embedded chunk(s), embedded %d", reused, embedded)

        ann_p = ann.resolve_ann_params(ann_given, dim, n)
        if shards > n:
            raise InvalidArgument(f"cannot split {n} documents into {shards} shards")
        full = _full_params(enc_p, ann_p, dim)
        if limit is not None:
            full["limit"] = limit
        idx_dir = work / "index"
        idx_key = {"params": full, "shards": shards, "n": n}
        idx_state = idx_dir / "index.json"
        try:
            same = json.loads(idx_state.read_text(encoding="utf-8")) == idx_key
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(idx_dir, ignore_errors=True)
            idx_dir.mkdir(parents=True)
            write_json(idx_state, idx_key)

        t1 = time.perf_counter()
        trained = None
        if ann.needs_training(ann_p["index_type"]):
            trained = idx_dir / "trained.faiss"
            if not trained.is_file():
                train_index(store, ann_p, dim, n, cs, trained)
        set_id = shard_set_id(corpus_sha256, "dense", encoder, full, shards) if shards > 1 else None
        stats = {"chunk_size": cs, "chunks": reused + embedded, "chunks_reused": reused, "chunks_embedded": embedded,
                 "embed_seconds": round(embed_s, 3)}
        manifests: list[dict[str, Any]] = []
        tree = idx_dir / "out"
        tree.mkdir(exist_ok=True)
        ranges = shard_ranges(n, shards)
        with tqdm(desc="dense: add", unit="vec", total=n, disable=not show_progress) as bar:
            for i, (a, b) in enumerate(ranges):
                final = tree / shard_dir_name(i, shards) if shards > 1 else tree / "index"
                m = {**base_manifest, "num_documents": b - a, "encoder": encoder, "params": full}
                if set_id is not None:
                    m["shard"] = {"index": i, "count": shards, "row_start": a, "row_end": b, "set_id": set_id}
                if (final / MANIFEST).is_file():  # finished by an earlier run
                    bar.update(b - a)
                    manifests.append(json.loads((final / MANIFEST).read_text(encoding="utf-8")))
                    continue
                tmp = tree / f".{final.name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                write_index_dir(tmp, store, ann_p, dim, trained, a, b, cs, bar)
                write_json(tmp / MANIFEST, m)
                os.replace(tmp, final)
                manifests.append(m)
        stats["index_seconds"] = round(time.perf_counter() - t1, 3)
        stats["total_seconds"] = round(time.perf_counter() - t_start, 3)

        if shards > 1:
            from s3core.retrieval.index import check_shard_set

            check_shard_set(manifests)
            result = {**base_manifest, "num_documents": n, "encoder": encoder, "params": full, "set_id": set_id,
                      "count": shards,
                      "shards": [{"dir": shard_dir_name(i, shards), "index": i, "row_start": a, "row_end": b,
                                  "num_documents": b - a} for i, (a, b) in enumerate(ranges)],
                      "build": stats}
            write_json(tree / SHARDS_FILE, result)
            for i in range(shards):  # the stats of this run, recorded in every shard
                mp = tree / shard_dir_name(i, shards) / MANIFEST
                write_json(mp, {**json.loads(mp.read_text(encoding="utf-8")), "build": stats})
            done = tree
        else:
            result = {**manifests[0], "build": stats}
            write_json(tree / "index" / MANIFEST, result)
            done = tree / "index"
        _swap_into_place(done, out)
        shutil.rmtree(work, ignore_errors=True)  # still under the lock: no other build sees it half-gone
    return result
