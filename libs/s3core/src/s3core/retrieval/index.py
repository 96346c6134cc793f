"""Index directories: build one from a corpus, load and validate one, check a set of shards.

Layout::

    <dir>/manifest.json      {format_version, name, backend, corpus_path, corpus_sha256,
                              num_documents, encoder, params, [shard], created_at, s3core_version,
                              [build]}
    <dir>/docs.jsonl, docs.offsets.npy, docs.ids.json     document store
    <dir>/bm25/...            bm25 backend (bm25s files)
    <dir>/faiss.index         dense backend (index type in params["index_type"]; "flat" if absent)

A sharded dense build (``shards`` > 1) writes ``<dir>/shard-00000-of-0000N/`` ... (each an index
directory as above holding a contiguous passage range) and ``<dir>/shards.json``.  Each shard's
manifest carries ``"shard": {"index", "count", "row_start", "row_end", "set_id"}`` with
``num_documents = row_end - row_start`` and the whole corpus' ``corpus_sha256``; a global row is
``row_start`` + the shard's local row.  :func:`check_shard_set` checks that manifests form one set.

A BM25 build runs in a temporary sibling directory and is renamed into place only when complete,
so a failed build (e.g. a malformed corpus line) leaves nothing behind and never clobbers a good
index.  A dense build checkpoints embedded chunks in ``<dir>.partial/`` so that a rerun after a kill
resumes (:mod:`s3core.retrieval.build`); it too renames the finished index into place last.
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
from s3core.io import atomic_dir, check_output_dir, write_json
from s3core.retrieval.base import IndexInfo, Retriever

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKENDS = ("bm25", "dense")
SHARDS_FILE = "shards.json"
SHARD_KEYS = ("index", "count", "row_start", "row_end", "set_id")
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
    chunk_size: int | None = None,
    shards: int = 1,
    restart: bool = False,
) -> dict[str, Any]:
    """Build a ``backend`` ("bm25" | "dense") index of the jsonl corpus into ``out_dir``.

    ``name`` defaults to the directory name; ``params`` are backend parameters (bm25: ``k1``, ``b``,
    ``method``; dense: ``query_prefix``, ``passage_prefix``, ``batch_size``, ``max_seq_length``,
    ``device`` and the index parameters of :mod:`s3core.retrieval.ann`: ``index_type``, ``fp16``,
    ``nlist``, ``nprobe``, ``pq_m``, ``pq_nbits``, ``hnsw_m``, ``ef_construction``, ``ef_search``,
    ``train_size``); ``limit`` indexes only the first N documents.

    Dense builds stream the corpus in ``chunk_size`` passages, checkpoint each embedded chunk in
    ``<out_dir>.partial/`` and resume from there when rerun after a kill (``restart`` discards it);
    ``shards`` > 1 writes ``shards`` index directories by passage range plus ``shards.json``
    (:mod:`s3core.retrieval.build`).  Returns the manifest written (sharded: ``shards.json``).
    """
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown index backend {backend!r} (known: {', '.join(BACKENDS)})")
    if limit is not None and limit < 1:
        raise InvalidArgument(f"limit must be >= 1, got {limit}")
    if backend == "bm25":
        if shards != 1:
            raise InvalidArgument(
                "bm25 indexes cannot be sharded: each shard would compute its own IDF statistics, so merged "
                "scores would not equal one index's; build one bm25 index (--shards 1)"
            )
        if chunk_size is not None:
            raise InvalidArgument("chunk_size applies to dense builds only (bm25 indexes the corpus in one pass)")
    corpus = Path(corpus_path)
    out = Path(out_dir)
    check_index_out(out, corpus)  # before the corpus is read or an encoder loaded
    base = {
        "format_version": FORMAT_VERSION,
        "name": name or out.resolve().name,
        "backend": backend,
        "corpus_path": str(corpus.resolve()),
        "corpus_sha256": "",
        "num_documents": 0,
        "encoder": "",
        "params": {},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "s3core_version": S3CORE_VERSION,
    }
    if backend == "dense":
        from s3core.retrieval.build import build_dense_index, scan_corpus

        sha, lines = scan_corpus(corpus)  # also reports a missing corpus before any work
        return build_dense_index(corpus, out, base_manifest={**base, "corpus_sha256": sha, "encoder": encoder},
                                 encoder=encoder, params=params, limit=limit, threads=threads,
                                 show_progress=show_progress, chunk_size=chunk_size, shards=shards, restart=restart,
                                 corpus_sha256=sha, corpus_lines=lines)
    from s3core.retrieval.bm25 import check_bm25_params

    check_bm25_params(params)  # a bad k1 / b / method before the corpus is read
    sha = corpus_sha256(corpus)  # also reports a missing corpus before any work
    docs = iter_corpus(corpus)
    if limit is not None:
        docs = islice(docs, limit)
    with atomic_dir(out) as tmp:
        from s3core.retrieval.bm25 import BM25Retriever

        n, used = BM25Retriever.build(docs, tmp, show_progress=show_progress, params=params)
        if limit is not None:
            used["limit"] = limit
        manifest = {**base, "corpus_sha256": sha, "num_documents": n, "params": used}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def check_index_out(out_dir: str | os.PathLike[str], corpus_path: str | os.PathLike[str] | None = None) -> None:
    """Refuse an ``--out`` that a build would destroy, before any work.

    Only an existing *index* (a directory with ``manifest.json`` or ``shards.json``) or an empty
    directory may be replaced.  Anything else -- a file (e.g. ``--corpus`` and ``--out`` swapped), a
    directory of other files, the current directory or one above it, a directory holding the corpus
    -- is refused with :class:`InvalidArgument` and left untouched; so is an output whose parent is
    not a writable directory.
    """
    out = Path(out_dir)
    if not os.fspath(out_dir) or not out.name or out.name in (".", ".."):
        raise InvalidArgument(f"--out {os.fspath(out_dir)!r} must name the index directory to write, e.g. runs/idx")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InvalidArgument(f"--out {out} is the current directory or one above it; give a new directory for the index")
    if corpus_path is not None:
        corpus = Path(corpus_path).resolve()
        if corpus == resolved:
            raise InvalidArgument(f"--out {out} is the corpus file itself (are --corpus and --out swapped?)")
        if resolved in corpus.parents:
            raise InvalidArgument(f"--out {out} holds the corpus {corpus_path}; write the index somewhere else")
    if out.is_symlink() and not out.exists():
        raise InvalidArgument(f"--out {out} is a dangling symbolic link; remove it or choose another path")
    if out.exists():
        if not out.is_dir():
            raise InvalidArgument(f"--out {out} is an existing file, not an index directory (are --corpus and --out "
                                  "swapped?); it was left untouched")
        if not ((out / MANIFEST).is_file() or (out / SHARDS_FILE).is_file()):
            try:
                empty = next(out.iterdir(), None) is None
            except OSError as exc:
                raise InvalidArgument(f"--out {out}: cannot list it ({exc})") from None
            if not empty:
                raise InvalidArgument(f"--out {out} exists and is not an index directory (no {MANIFEST}); only an "
                                      "index can be replaced -- choose a new path or remove it yourself")
    check_output_dir(resolved.parent, "--out")


def _is_lucene(index_dir: str | os.PathLike[str]) -> bool:
    """A ``lucene:`` name (a pyserini prebuilt index or path) or a Lucene directory (``segments_N``)."""
    from s3core.retrieval.lucene import LUCENE_PREFIX, is_lucene_index  # no pyserini, no JVM

    return os.fspath(index_dir).startswith(LUCENE_PREFIX) or is_lucene_index(index_dir)


def is_index_path(index_dir: str | os.PathLike[str]) -> bool:
    """Cheap check (no loading): an index directory, a sharded build's set directory, or a Lucene index."""
    d = Path(index_dir)
    return (d / MANIFEST).is_file() or (d / SHARDS_FILE).is_file() or _is_lucene(index_dir)


def read_manifest(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` (no backend files are opened).  For a Lucene index (pyserini),
    a manifest-shaped description; this checks Java >= 21 and pyserini, so a service fails before binding."""
    if _is_lucene(index_dir):
        from s3core.retrieval.lucene import lucene_manifest

        return lucene_manifest(index_dir)
    d = Path(index_dir)
    if not d.exists():
        raise NotFound(f"index directory {d} does not exist (build one with `s3 index build`)")
    if not d.is_dir():
        raise InvalidArgument(f"index path {d} is not a directory")
    mpath = d / MANIFEST
    if not mpath.is_file() and (d / SHARDS_FILE).is_file():
        raise InvalidArgument(
            f"{d} is a sharded index set ({SHARDS_FILE}), not one index: load its shard directories "
            f"({d}/shard-*-of-*) one by one"
        )
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
    n = manifest["num_documents"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgument(f"{mpath}: 'num_documents' must be an integer >= 0, got {n!r}")
    dim = manifest["params"].get("dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise InvalidArgument(f"{mpath}: params.dim must be an integer >= 1, got {dim!r}")
    if "shard" in manifest:
        check_shard_block(manifest, str(mpath))
    return manifest


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_shard_block(manifest: dict[str, Any], where: str = "manifest") -> dict[str, Any]:
    """Validate the ``shard`` block of one manifest against its ``num_documents``; return the block.

    The contract: ``{"index": i, "count": N, "row_start": a, "row_end": b, "set_id": hex sha256}`` with
    ``0 <= i < N``, ``0 <= a <= b`` and ``b - a == num_documents``; global row = ``row_start`` + local row.
    """
    block = manifest.get("shard")
    if not isinstance(block, dict):
        raise InvalidArgument(f"{where}: 'shard' must be an object, got {type(block).__name__}")
    missing = [k for k in SHARD_KEYS if k not in block]
    if missing:
        raise InvalidArgument(f"{where}: shard block is missing {', '.join(missing)}")
    bad = [k for k in ("index", "count", "row_start", "row_end") if not _is_int(block[k])]
    if bad:
        raise InvalidArgument(f"{where}: shard {', '.join(bad)} must be integer(s), got "
                              f"{', '.join(repr(block[k]) for k in bad)}")
    i, count, a, b = block["index"], block["count"], block["row_start"], block["row_end"]
    if count < 1:
        raise InvalidArgument(f"{where}: shard count must be >= 1, got {count}")
    if not 0 <= i < count:
        raise InvalidArgument(f"{where}: shard index {i} is out of range for a set of {count} (0..{count - 1})")
    if a < 0 or b < a:
        raise InvalidArgument(f"{where}: shard row range [{a}, {b}) is not a valid range")
    n = manifest.get("num_documents")
    if b - a != n:
        raise InvalidArgument(f"{where}: shard rows [{a}, {b}) hold {b - a} documents but num_documents is {n}")
    sid = block["set_id"]
    if not isinstance(sid, str) or len(sid) != 64 or any(c not in "0123456789abcdef" for c in sid):
        raise InvalidArgument(f"{where}: shard set_id must be a 64-character hex sha256, got {sid!r}")
    return block


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] + "…" if len(s) > 16 else s


def check_shard_set(manifests: list[dict[str, Any]]) -> None:
    """Raise :class:`InvalidArgument` unless ``manifests`` are one complete shard set.

    One complete set: every manifest has a valid ``shard`` block; all share ``set_id``,
    ``corpus_sha256``, backend, encoder, ``params["dim"]`` and ``count``; the shard indexes are
    exactly ``0..count-1`` once each; the row ranges are contiguous from row 0.  The order of
    ``manifests`` does not matter.  Messages name the shard, e.g. "shard 2 of 4 is missing".
    """
    if not manifests:
        raise InvalidArgument("no shard manifests given")
    blocks = []
    for k, m in enumerate(manifests):
        if not isinstance(m, dict) or "shard" not in m:
            raise InvalidArgument(f"manifest #{k + 1} ({m.get('name', '?') if isinstance(m, dict) else m!r}) "
                                  "is not a shard (no 'shard' block)")
        blocks.append(check_shard_block(m, f"manifest #{k + 1} (shard {m['shard'].get('index', '?')})"
                                        if isinstance(m["shard"], dict) else f"manifest #{k + 1}"))
    order = sorted(range(len(manifests)), key=lambda k: blocks[k]["index"])
    ref_k = order[0]
    ref, rb = manifests[ref_k], blocks[ref_k]
    count = rb["count"]
    ref_name = f"shard {rb['index']}"

    def field(m: dict[str, Any], what: str) -> Any:
        if what == "dim":
            return m.get("params", {}).get("dim") if isinstance(m.get("params"), dict) else None
        if what in ("set_id", "count"):
            return m["shard"][what]
        return m.get(what)

    for k in order[1:]:
        m, b = manifests[k], blocks[k]
        for what, label in (("count", "count"), ("set_id", "set_id"), ("corpus_sha256", "corpus sha"),
                            ("backend", "backend"), ("encoder", "encoder"), ("dim", "dim")):
            if field(m, what) != field(ref, what):
                raise InvalidArgument(
                    f"shard {b['index']} has {label} {_short(field(m, what))} but {ref_name} has "
                    f"{_short(field(ref, what))}: they are not from the same build"
                )
    seen: dict[int, int] = {}
    for k in order:
        i = blocks[k]["index"]
        if i in seen:
            raise InvalidArgument(f"shard {i} of {count} appears more than once (manifests #{seen[i] + 1} and #{k + 1})")
        seen[i] = k
    missing = [i for i in range(count) if i not in seen]
    if missing:
        which = ", ".join(map(str, missing))
        raise InvalidArgument(f"shard{'s' if len(missing) > 1 else ''} {which} of {count} "
                              f"{'are' if len(missing) > 1 else 'is'} missing")
    prev_end = 0
    for i in range(count):
        b = blocks[seen[i]]
        if b["row_start"] != prev_end:
            where = "the set starts at row 0" if i == 0 else f"shard {i - 1} ends at row {prev_end}"
            raise InvalidArgument(f"shard {i} of {count} starts at row {b['row_start']} but {where}: "
                                  "the row ranges are not contiguous")
        prev_end = b["row_end"]


def read_shard_set(set_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read ``<set_dir>/shards.json`` and every shard's manifest (checked with :func:`check_shard_set`
    and against ``shards.json``); returns ``(shards.json, manifests in shard order)``."""
    d = Path(set_dir)
    spath = d / SHARDS_FILE
    if not spath.is_file():
        raise NotFound(f"{d} is not a sharded index set: no {SHARDS_FILE}")
    try:
        listing = json.loads(spath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{spath}: not valid JSON: {exc}") from None
    if not isinstance(listing, dict) or not isinstance(listing.get("shards"), list):
        raise InvalidArgument(f"{spath}: expected an object with a 'shards' list")
    manifests = []
    for entry in listing["shards"]:
        sub = entry.get("dir") if isinstance(entry, dict) else None
        if not isinstance(sub, str) or not sub or "/" in sub or sub in (".", ".."):
            raise InvalidArgument(f"{spath}: bad shard entry {entry!r}")
        if not (d / sub / MANIFEST).is_file():
            raise InvalidArgument(f"{d / sub}: shard {entry.get('index', '?')} of {listing.get('count', '?')} is "
                                  f"missing (no {MANIFEST})")
        manifests.append(read_manifest(d / sub))
    check_shard_set(manifests)
    first = manifests[0]["shard"]
    if listing.get("set_id") != first["set_id"] or listing.get("count") != first["count"] or \
            len(manifests) != first["count"]:
        raise InvalidArgument(f"{spath}: lists {len(manifests)} shard(s) of set {_short(listing.get('set_id'))} but "
                              f"the shards are {first['count']} of set {_short(first['set_id'])}")
    return listing, sorted(manifests, key=lambda m: m["shard"]["index"])


def index_info(manifest: dict[str, Any]) -> IndexInfo:
    return IndexInfo(
        name=str(manifest["name"]),
        backend=str(manifest["backend"]),
        num_documents=int(manifest["num_documents"]),
        corpus_sha256=str(manifest["corpus_sha256"]),
        encoder=str(manifest.get("encoder") or ""),
        # a shard's block travels with its params, so ListIndexes tells fan-out clients where it sits
        params={**manifest["params"], **({"shard": manifest["shard"]} if "shard" in manifest else {})},
    )


def load_index(index_dir: str | os.PathLike[str], threads: int = 0, name: str | None = None, *,
               device: str | None = None, faiss_gpus: int = 0) -> Retriever:
    """Validate ``index_dir`` and load it.  ``name`` overrides the manifest's name.

    Missing directory / manifest → :class:`NotFound`; an unsupported format_version, an unknown
    backend or missing / inconsistent files → :class:`InvalidArgument`.  A Lucene index (``lucene:``
    name or directory) opens through pyserini (:mod:`s3core.retrieval.lucene`).
    """
    if _is_lucene(index_dir):
        from s3core.retrieval.lucene import open_lucene_index

        return open_lucene_index(index_dir, name=name, threads=threads)
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
    if info.backend == "dense":
        retriever = cls.load(d, info, threads=threads, device=device or None, faiss_gpus=faiss_gpus)
    else:
        retriever = cls.load(d, info, threads=threads)
    if retriever.num_docs != info.num_documents:
        retriever.close()
        raise InvalidArgument(
            f"{d}: manifest says {info.num_documents} documents but the index holds {retriever.num_docs}; rebuild it"
        )
    return retriever
