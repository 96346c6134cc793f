"""Index directories: build one atomically from a corpus, load and validate one.

Layout::

    <dir>/manifest.json      {format_version, name, backend, corpus_path, corpus_sha256,
                              num_documents, encoder, params, created_at, s3core_version}
    <dir>/docs.jsonl, docs.offsets.npy, docs.ids.json     document store
    <dir>/bm25/...            bm25 backend (bm25s files)
    <dir>/faiss.index         dense backend

A build runs in a temporary sibling directory and is renamed into place only when complete, so a
failed build (e.g. a malformed corpus line) leaves nothing behind and never clobbers a good index.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from s3core import __version__ as S3CORE_VERSION
from s3core.config import EMBEDDED_ENCODER
from s3core.data import corpus_sha256, iter_corpus
from s3core.errors import InvalidArgument, NotFound
from s3core.io import atomic_dir, write_json
from s3core.retrieval.base import IndexInfo, Retriever

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKENDS = ("bm25", "dense")
_REQUIRED_KEYS = ("format_version", "name", "backend", "corpus_sha256", "num_documents", "params")


def build_index(
    corpus_path: str | os.PathLike[str],
    backend: str,
    out_dir: str | os.PathLike[str],
    encoder: str = EMBEDDED_ENCODER,
    show_progress: bool = True,
    *,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    limit: int | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Build a ``backend`` ("bm25" | "dense") index of the jsonl corpus into ``out_dir``.

    ``name`` defaults to the directory name; ``params`` are backend parameters (bm25: ``k1``, ``b``,
    ``method``; dense: ``query_prefix``, ``passage_prefix``, ``batch_size``, ``max_seq_length``,
    ``device``); ``limit``
    indexes only the first N documents.  Returns the manifest written.
    """
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown index backend {backend!r} (known: {', '.join(BACKENDS)})")
    if limit is not None and limit < 1:
        raise InvalidArgument(f"limit must be >= 1, got {limit}")
    corpus = Path(corpus_path)
    out = Path(out_dir)
    sha = corpus_sha256(corpus)  # also reports a missing corpus before any work
    docs = iter_corpus(corpus)
    if limit is not None:
        docs = islice(docs, limit)
    with atomic_dir(out) as tmp:
        if backend == "bm25":
            from s3core.retrieval.bm25 import BM25Retriever

            n, used = BM25Retriever.build(docs, tmp, show_progress=show_progress, params=params)
            enc = ""
        else:
            from s3core.retrieval.dense import DenseRetriever

            n, used = DenseRetriever.build(docs, tmp, encoder=encoder, show_progress=show_progress,
                                           params=params, threads=threads)
            enc = encoder
        if limit is not None:
            used["limit"] = limit
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name or out.resolve().name,
            "backend": backend,
            "corpus_path": str(corpus.resolve()),
            "corpus_sha256": sha,
            "num_documents": n,
            "encoder": enc,
            "params": used,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "s3core_version": S3CORE_VERSION,
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def read_manifest(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` (no backend files are opened)."""
    d = Path(index_dir)
    if not d.exists():
        raise NotFound(f"index directory {d} does not exist (build one with `s3 index build`)")
    if not d.is_dir():
        raise InvalidArgument(f"index path {d} is not a directory")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise NotFound(f"{d} is not an index directory: no {MANIFEST} (build one with `s3 index build`)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{mpath}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise InvalidArgument(f"{mpath}: expected a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise InvalidArgument(f"{mpath}: missing key(s) {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise InvalidArgument(
            f"{mpath}: index format_version {manifest['format_version']!r} is not supported "
            f"(this s3core reads version {FORMAT_VERSION}); rebuild the index"
        )
    if manifest["backend"] not in BACKENDS:
        raise InvalidArgument(f"{mpath}: unknown backend {manifest['backend']!r} (known: {', '.join(BACKENDS)})")
    if manifest["backend"] == "dense" and not manifest.get("encoder"):
        raise InvalidArgument(f"{mpath}: a dense index needs an 'encoder'")
    if not isinstance(manifest["params"], dict):
        raise InvalidArgument(f"{mpath}: 'params' must be an object")
    return manifest


def index_info(manifest: dict[str, Any]) -> IndexInfo:
    return IndexInfo(
        name=str(manifest["name"]),
        backend=str(manifest["backend"]),
        num_documents=int(manifest["num_documents"]),
        corpus_sha256=str(manifest["corpus_sha256"]),
        encoder=str(manifest.get("encoder") or ""),
        params=dict(manifest["params"]),
    )


def load_index(index_dir: str | os.PathLike[str], threads: int = 0, name: str | None = None) -> Retriever:
    """Validate ``index_dir`` and load it.  ``name`` overrides the manifest's name.

    Missing directory / manifest → :class:`NotFound`; an unsupported format_version, an unknown
    backend or missing / inconsistent files → :class:`InvalidArgument`.
    """
    from s3core.retrieval.store import STORE_FILES

    d = Path(index_dir)
    manifest = read_manifest(d)
    if name:
        manifest = {**manifest, "name": name}
    info = index_info(manifest)
    if info.backend == "bm25":
        from s3core.retrieval.bm25 import BM25Retriever as cls
    else:
        from s3core.retrieval.dense import DenseRetriever as cls  # type: ignore[assignment]
    missing = [f for f in [*STORE_FILES, *cls.required_files()] if not (d / f).is_file()]
    if missing:
        raise InvalidArgument(f"{d}: index is incomplete, missing {', '.join(missing)}; rebuild it")
    retriever = cls.load(d, info, threads=threads)
    if retriever.num_docs != info.num_documents:
        retriever.close()
        raise InvalidArgument(
            f"{d}: manifest says {info.num_documents} documents but the index holds {retriever.num_docs}; rebuild it"
        )
    return retriever
