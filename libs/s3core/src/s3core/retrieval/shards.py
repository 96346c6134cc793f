"""Sharded indexes: the exact top-k merge, a set of shards served as one index, shard-set helpers.

A big flat index (wiki-18: 21M passages) is split into contiguous row ranges, each built as an
ordinary index directory whose ``manifest.json`` also has a shard block::

    "shard": {"index": i, "count": N, "row_start": a, "row_end": b, "set_id": "<hex sha256>"}

with ``num_documents = b - a`` and ``corpus_sha256`` the hash of the *whole* corpus.  Row ``r`` of
shard ``i`` is global row ``a + r``.  A sharded build (``s3 index build --shards N``) writes the
shards as ``<dir>/shard-0000i-of-0000N/`` next to a ``<dir>/shards.json`` listing
(:mod:`s3core.retrieval.index`, which also owns :func:`check_shard_set`).

Merge order (the one rule, used by :class:`ShardedRetriever` and by the client-side fan-out
:class:`s3core.rpc.sharded.ShardedRetrieverClient`): **score descending, then global row
ascending**.  For distinct scores this is exactly the order one index over the whole corpus gives
(a flat inner-product index is exhaustive, so the global top-k is always among the shards' top-k).
For *exactly* equal scores the sharded order is "lower global row first" among the hits the shards
returned; one faiss index orders ties by its own heap (not by row) and may keep a different subset
of tied hits at the k-th place, so ties are the one case where sharded and unsharded results may
differ.  Sharded flat dense indexes are exact; ANN shards (IVF, HNSW) are as approximate as one ANN
index.  (BM25 is not sharded by the builder: each shard would score with its own IDF statistics;
a shard set of another backend is still merged the same way, from each shard's ranked lists.)
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from s3core.errors import InvalidArgument, NotFound
from s3core.retrieval.base import IndexInfo, Retriever, check_k, check_queries
from s3core.types import Doc

logger = logging.getLogger(__name__)

SHARD_KEY = "shard"  # the manifest's shard block (and its copy in ListIndexes' params_json)
SET_KEY = "shards"  # params key of a logical (merged) index: {"count", "set_id"}

T = TypeVar("T")

__all__ = [
    "SHARD_KEY", "IndexGroup", "ShardSetError", "ShardedRetriever", "check_shard_set", "load_shard_set",
    "logical_info", "logical_name", "merge_ranked_lists", "merge_topk", "plan_index_dirs", "shard_block",
]


class ShardSetError(InvalidArgument):
    """The index directories given as one shard set are not a complete, loadable set."""


# --- shard blocks and set validation ----------------------------------------------------------------

def shard_block(manifest: Mapping[str, Any], where: str = "") -> dict[str, Any] | None:
    """The manifest's shard block, checked (``s3core.retrieval.index.check_shard_block``), or ``None``
    for an unsharded index."""
    if manifest.get(SHARD_KEY) is None:
        return None
    from s3core.retrieval.index import check_shard_block

    return dict(check_shard_block(dict(manifest), where or f"index {manifest.get('name', '?')!r}"))


def check_shard_set(manifests: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`InvalidArgument` unless ``manifests`` form one complete shard set (the index
    builder's check, ``s3core.retrieval.index.check_shard_set``; imported on use)."""
    from s3core.retrieval.index import check_shard_set as check

    check([dict(m) for m in manifests])


def logical_name(names: Sequence[str], set_id: str = "") -> str:
    """The name a shard set is served under: the shards' common name, with a shard suffix such as
    ``-shard-3``, ``_shard03`` or ``-shard-3-of-8`` removed; else ``shards-<set_id[:8]>``."""
    uniq = set(names)
    if len(uniq) == 1:
        return names[0]
    stripped = {re.sub(r"[-_.]?shard[-_.]?\d+(?:[-_.]?of[-_.]?\d+)?$", "", n, flags=re.IGNORECASE) for n in names}
    if len(stripped) == 1:
        name = stripped.pop()
        if name:
            return name
    return f"shards-{set_id[:8]}" if set_id else "shards"


def logical_info(infos: Sequence[IndexInfo], blocks: Sequence[Mapping[str, Any]], name: str | None = None) -> IndexInfo:
    """The :class:`IndexInfo` of a shard set seen as one index (in-process or behind the client fan-out,
    the same; so both give the same baseline-cache fingerprint).

    ``num_documents`` is the total; ``params`` keeps the build parameters every shard agrees on and
    adds ``"shards": {"count", "set_id"}``.
    """
    if not infos or len(infos) != len(blocks):
        raise InvalidArgument("logical_info needs one shard block per shard info")
    sid = str(blocks[0]["set_id"])
    common: dict[str, Any] = {}
    missing = object()
    for key, value in infos[0].params.items():
        if key == SHARD_KEY:
            continue
        if all(i.params.get(key, missing) == value for i in infos[1:]):
            common[key] = value
    common[SET_KEY] = {"count": len(infos), "set_id": sid}
    return IndexInfo(
        name=name or logical_name([i.name for i in infos], sid),
        backend=infos[0].backend,
        num_documents=sum(int(i.num_documents) for i in infos),
        corpus_sha256=infos[0].corpus_sha256,
        encoder=infos[0].encoder,
        params=common,
    )


# --- the merge ---------------------------------------------------------------------------------------

def merge_topk(per_shard_results: Sequence[tuple[Any, Any]], k: int,
               row_offsets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists into the global top-k, ordered by (score desc, global row asc).

    ``per_shard_results[s]`` is shard ``s``'s ``(scores, local_rows)``, two ``(num_queries, k_s)``
    arrays (faiss's ``search`` output; ``k_s`` may differ per shard, local row ``-1`` = no hit);
    ``row_offsets[s]`` is the shard's first global row.  Returns ``(scores, global_rows)`` of shape
    ``(num_queries, min(k, sum k_s))``, float64 / int64; slots without a hit (a query that got
    fewer than ``k`` hits in all) hold score ``-inf`` and row ``-1`` at the end of the row.
    """
    k = check_k(k)
    if len(per_shard_results) != len(row_offsets):
        raise InvalidArgument(f"{len(per_shard_results)} shard results but {len(row_offsets)} row offsets")
    scores_parts: list[np.ndarray] = []
    rows_parts: list[np.ndarray] = []
    nq: int | None = None
    for s, ((scores, rows), offset) in enumerate(zip(per_shard_results, row_offsets)):
        sc = np.asarray(scores, dtype=np.float64)
        rw = np.asarray(rows, dtype=np.int64)
        if sc.ndim != 2 or sc.shape != rw.shape:
            raise InvalidArgument(f"shard {s}: scores {sc.shape} and rows {rw.shape} must be two equal 2-d arrays")
        if nq is None:
            nq = sc.shape[0]
        elif sc.shape[0] != nq:
            raise InvalidArgument(f"shard {s} answered {sc.shape[0]} queries, shard 0 {nq}")
        hit = rw >= 0
        scores_parts.append(np.where(hit, sc, -np.inf))
        rows_parts.append(np.where(hit, rw + int(offset), -1))
    if nq is None:
        return np.empty((0, 0), dtype=np.float64), np.empty((0, 0), dtype=np.int64)
    all_scores = np.concatenate(scores_parts, axis=1)
    all_rows = np.concatenate(rows_parts, axis=1)
    kk = min(k, all_scores.shape[1])
    # np.lexsort: the last key is the primary one; misses sort after every hit
    tie_key = np.where(all_rows >= 0, all_rows, np.iinfo(np.int64).max)
    order = np.lexsort((tie_key, np.where(all_rows >= 0, -all_scores, np.inf)), axis=-1)[:, :kk]
    return np.take_along_axis(all_scores, order, axis=1), np.take_along_axis(all_rows, order, axis=1)


def merge_ranked_lists(per_shard_lists: Sequence[Sequence[Sequence[T]]], k: int, row_offsets: Sequence[int],
                       score: Callable[[T], float] = lambda d: float(d.score)) -> list[list[T]]:  # type: ignore[attr-defined]
    """:func:`merge_topk` for ranked lists of items (e.g. :class:`Doc`) whose local rows are unknown.

    ``per_shard_lists[s][q]`` is shard ``s``'s ranked list for query ``q``.  An item's position in
    its shard's list stands in for its local row: shards are contiguous row ranges in set order, so
    (score desc, shard offset + position asc) is (score desc, global row asc) whenever each shard
    lists its own ties by row.  Returns the global top-``k`` items per query.
    """
    k = check_k(k)
    n_shards = len(per_shard_lists)
    if n_shards != len(row_offsets):
        raise InvalidArgument(f"{n_shards} shard results but {len(row_offsets)} row offsets")
    if n_shards == 0:
        return []
    nq = len(per_shard_lists[0])
    for s, lists in enumerate(per_shard_lists):
        if len(lists) != nq:
            raise InvalidArgument(f"shard {s} answered {len(lists)} queries, shard 0 {nq}")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for s, lists in enumerate(per_shard_lists):
        width = max((len(x) for x in lists), default=0)
        if s + 1 < n_shards and width > row_offsets[s + 1] - row_offsets[s]:
            raise InvalidArgument(f"shard {s} returned {width} hits for a query but holds only "
                                  f"{row_offsets[s + 1] - row_offsets[s]} documents")
        sc = np.full((nq, width), -np.inf)
        rw = np.full((nq, width), -1, dtype=np.int64)
        for q, items in enumerate(lists):
            if items:
                sc[q, :len(items)] = [score(x) for x in items]
                rw[q, :len(items)] = np.arange(len(items))
        parts.append((sc, rw))
    _, rows = merge_topk(parts, k, row_offsets)
    offsets = np.asarray(row_offsets, dtype=np.int64)
    out: list[list[T]] = []
    for q in range(nq):
        hits = rows[q][rows[q] >= 0]
        shard_of = np.searchsorted(offsets, hits, side="right") - 1
        out.append([per_shard_lists[s][q][int(r - offsets[s])] for s, r in zip(shard_of.tolist(), hits.tolist())])
    return out


# --- several shards in one process --------------------------------------------------------------------

class ShardedRetriever(Retriever):
    """Several loaded shards of one set, searched in parallel threads and merged by :func:`merge_topk`.

    ``shards[i]`` is loaded from the index directory whose manifest is ``manifests[i]`` (any order);
    the set is checked with :func:`check_shard_set`.  Dense shards that use the same encoder share one
    (the first shard's): a query batch is encoded once, then every shard's faiss index is searched
    with the same vectors in parallel, and the global top-k is merged on (score, global row).  Other
    backends search each shard fully and merge the ranked lists.  Thread-safe.
    """

    def __init__(self, shards: Sequence[Retriever], manifests: Sequence[Mapping[str, Any]], *,
                 name: str | None = None, max_workers: int | None = None) -> None:
        if not shards or len(shards) != len(manifests):
            raise InvalidArgument(f"{len(shards)} shards but {len(manifests)} manifests")
        check_shard_set(manifests)
        blocks = [shard_block(m) for m in manifests]
        order = sorted(range(len(shards)), key=lambda i: blocks[i]["index"])  # type: ignore[index]
        self.shards: list[Retriever] = [shards[i] for i in order]
        self.blocks: list[dict[str, Any]] = [blocks[i] for i in order]  # type: ignore[misc]
        self.row_offsets: list[int] = [int(b["row_start"]) for b in self.blocks]
        infos = [s.info() for s in self.shards]
        for info, b in zip(infos, self.blocks):
            if int(info.num_documents) != b["row_end"] - b["row_start"]:
                raise InvalidArgument(f"shard {b['index']} ({info.name!r}) holds {info.num_documents} documents "
                                      f"but covers rows {b['row_start']}..{b['row_end']}")
        self._info = logical_info(infos, self.blocks, name=name)
        self.num_docs = int(self.blocks[-1]["row_end"])
        self._encoder = self._share_encoder()
        n = len(self.shards)
        self._pool = ThreadPoolExecutor(max_workers=max_workers or min(32, 4 * n), thread_name_prefix="s3-shard") \
            if n > 1 else None

    def _share_encoder(self) -> Any:
        """The encoder every dense shard can use (then shared), or ``None`` (search shard by shard)."""
        from s3core.retrieval.dense import DenseRetriever

        if not all(isinstance(s, DenseRetriever) for s in self.shards):
            return None
        dense: list[DenseRetriever] = self.shards  # type: ignore[assignment]
        first = dense[0].encoder

        def same(e: Any) -> bool:
            return (e.query_prefix == first.query_prefix
                    and getattr(e.model, "max_seq_length", None) == getattr(first.model, "max_seq_length", None))

        if len({s.info().encoder for s in dense}) != 1 or not all(same(s.encoder) for s in dense):
            return None
        for s in dense[1:]:
            s.encoder = first  # one model in memory, one encoder pass per batch
        return first

    def _map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        if self._pool is None:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def search(self, queries: Sequence[str], k: int) -> list[list[Doc]]:
        qs = check_queries(queries)
        k = min(check_k(k), self.num_docs)
        if not qs:
            return []
        if self._encoder is None:
            lists = self._map(lambda s: s.search(qs, k), self.shards)
            return merge_ranked_lists(lists, k, self.row_offsets)
        emb = self._encoder.encode(qs, self._encoder.query_prefix)
        parts = self._map(lambda s: s.index.search(emb, min(k, s.num_docs)), self.shards)
        scores, rows = merge_topk(parts, k, self.row_offsets)
        return self._docs(scores, rows)

    def _docs(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Doc]]:
        offsets = np.asarray(self.row_offsets, dtype=np.int64)
        out: list[list[Doc | None]] = [[None] * int((r >= 0).sum()) for r in rows]
        hit_q, hit_pos = np.nonzero(rows >= 0)
        g = rows[hit_q, hit_pos]
        shard_of = np.searchsorted(offsets, g, side="right") - 1
        for s in np.unique(shard_of).tolist():
            sel = shard_of == s
            docs = self.shards[s].store.docs(g[sel] - offsets[s], scores[hit_q[sel], hit_pos[sel]])  # type: ignore[attr-defined]
            for q, p, d in zip(hit_q[sel].tolist(), hit_pos[sel].tolist(), docs):
                out[q][p] = d
        return out  # type: ignore[return-value]

    def get(self, ids: Sequence[str]) -> list[Doc]:
        ids = list(ids)
        out: list[Doc | None] = [None] * len(ids)
        for shard in self.shards:
            todo = [i for i, d in enumerate(out) if d is None]
            if not todo:
                break
            store = getattr(shard, "store", None)
            if store is not None:
                found = [(i, row) for i in todo if (row := store.row_of(ids[i])) is not None]
                for (i, _), doc in zip(found, store.docs([r for _, r in found])):
                    out[i] = doc
            else:
                for i in todo:
                    try:
                        out[i] = shard.get([ids[i]])[0]
                    except NotFound:
                        pass
        missing = [ids[i] for i, d in enumerate(out) if d is None]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise NotFound(f"no document with id {', '.join(map(repr, missing[:5]))}{more}")
        return out  # type: ignore[return-value]

    def info(self) -> IndexInfo:
        return self._info

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for s in self.shards:
            s.close()


# --- index directories -------------------------------------------------------------------------------

@dataclass
class IndexGroup:
    """What one retriever server loads as one index: an ordinary index directory (or a lone shard,
    served on its own for client-side fan-out), or the shards of one set (``sharded``)."""

    dirs: list[str]
    manifests: list[dict[str, Any]]
    sharded: bool = False
    absent: list[str] = field(default_factory=list)  # shards a set directory lists that are not on disk


def _read_set_dir(d: Path) -> IndexGroup:
    """A set directory written by a sharded build: ``shards.json`` + ``shard-*-of-*/`` (the shards on
    disk; the ones listed but absent are kept for the error message)."""
    from s3core.retrieval.index import MANIFEST, SHARDS_FILE, read_manifest

    spath = d / SHARDS_FILE
    try:
        listing = json.loads(spath.read_text(encoding="utf-8"))
        entries = listing["shards"]
        if not isinstance(entries, list):
            raise TypeError("'shards' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{spath}: not a shard listing: {exc}") from None
    group = IndexGroup([], [], sharded=True)
    for e in entries:
        sub = e.get("dir") if isinstance(e, dict) else None
        if not isinstance(sub, str) or not sub or "/" in sub or sub in (".", ".."):
            raise InvalidArgument(f"{spath}: bad shard entry {e!r}")
        if (d / sub / MANIFEST).is_file():
            group.dirs.append(str(d / sub))
            group.manifests.append(read_manifest(d / sub))
        else:
            group.absent.append(f"shard {e.get('index', '?')} of {listing.get('count', '?')} ({d / sub}: no {MANIFEST})")
    return group


def plan_index_dirs(dirs: Sequence[str | os.PathLike[str]]) -> list[IndexGroup]:
    """Read the manifests of a server's ``--index`` directories (raising on a path that is not an
    index) and group them: a set directory (``shards.json``) is one sharded group; two or more shard
    directories of one set (same ``set_id``) form one group at the place of the first; anything else
    -- an unsharded index, or one shard directory alone -- is a group of its own."""
    from s3core.retrieval.index import MANIFEST, SHARDS_FILE, read_manifest

    groups: list[IndexGroup] = []
    by_set: dict[str, IndexGroup] = {}
    for raw in dirs:
        d = Path(raw)
        if d.is_dir() and not (d / MANIFEST).is_file() and (d / SHARDS_FILE).is_file():
            groups.append(_read_set_dir(d))
            continue
        m = read_manifest(d)
        b = shard_block(m, str(d / MANIFEST))
        if b is None:
            groups.append(IndexGroup([str(d)], [m]))
        elif b["set_id"] in by_set:
            g = by_set[b["set_id"]]
            g.dirs.append(str(d))
            g.manifests.append(m)
            g.sharded = True
        else:
            by_set[b["set_id"]] = IndexGroup([str(d)], [m])
            groups.append(by_set[b["set_id"]])
    return groups


def load_shard_set(dirs: Sequence[str | os.PathLike[str]], threads: int = 0,
                   manifests: Sequence[Mapping[str, Any]] | None = None, name: str | None = None,
                   absent: Sequence[str] = (), *, device: str | None = None,
                   faiss_gpus: int = 0) -> ShardedRetriever:
    """Load the shard directories ``dirs`` (one set, any order) as one :class:`ShardedRetriever`.

    Raises :class:`ShardSetError` saying which shard and why when the set is incomplete or
    inconsistent, or a shard fails to load (shards loaded so far are closed again).  ``absent``
    describes shards known to be missing (from a set directory's listing).
    """
    from s3core.retrieval.index import load_index, read_manifest

    if absent:
        raise ShardSetError(f"shard set incomplete: {'; '.join(absent)}")
    if not dirs:
        raise ShardSetError("shard set has no shard directories")
    ms = [dict(m) for m in manifests] if manifests is not None else [read_manifest(d) for d in dirs]
    where = ", ".join(map(str, dirs))
    try:
        check_shard_set(ms)
    except InvalidArgument as exc:
        raise ShardSetError(f"shard set of {where}: {exc}") from None
    blocks = [shard_block(m) for m in ms]
    loaded: list[Retriever] = []
    try:
        for d, b in zip(dirs, blocks):
            assert b is not None
            try:
                loaded.append(load_index(d, threads=threads, device=device, faiss_gpus=faiss_gpus))
            except Exception as exc:  # noqa: BLE001 - any load failure names the shard
                raise ShardSetError(f"shard {b['index']} of {b['count']} ({d}) failed to load: "
                                    f"{type(exc).__name__}: {exc}") from exc
        try:
            return ShardedRetriever(loaded, ms, name=name)
        except InvalidArgument as exc:
            raise ShardSetError(f"shard set of {where}: {exc}") from None
    except BaseException:
        for r in loaded:
            r.close()
        raise
