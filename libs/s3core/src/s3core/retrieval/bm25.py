"""BM25 backend: bm25s (lucene scoring) + PyStemmer English stemming + English stopwords.

The index covers ``title + "\\n" + text`` of every document.  Files under the index directory:
``bm25/`` (bm25s's own ``save`` output) plus the document store (:mod:`s3core.retrieval.store`).

A search returns at most ``k`` documents, and only documents that share a (stemmed, non-stopword)
term with the query: fewer than ``k`` when fewer match, none for a query of stopwords or unknown
words -- as a Lucene BM25 search does.  Unrelated documents are never padded in.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import Stemmer
from bm25s.tokenization import Tokenized, Tokenizer, _infer_stopwords
from tqdm.auto import tqdm

from s3core.errors import InvalidArgument
from s3core.retrieval.base import IndexInfo, Retriever, check_k, check_queries
from s3core.retrieval.store import DocStore, DocStoreWriter
from s3core.types import Doc

logger = logging.getLogger(__name__)
# bm25s forces its own logger to DEBUG on import; keep it at the process level or WARNING.
logging.getLogger("bm25s").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))

BM25_SUBDIR = "bm25"
BM25_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json", "params.index.json")
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
STOPWORDS = "en"
STEMMER_LANGUAGE = "english"
DEFAULT_PARAMS: dict[str, Any] = {"k1": 1.5, "b": 0.75, "method": "lucene"}
BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")  # bm25s' scoring variants


def check_bm25_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """The bm25 build parameters with defaults filled in; :class:`InvalidArgument` naming the parameter
    for an unknown key, a non-numeric or negative ``k1``, a ``b`` outside [0, 1] or an unknown ``method``."""
    p = {**DEFAULT_PARAMS, **(params or {})}
    unknown = set(p) - set(DEFAULT_PARAMS)
    if unknown:
        raise InvalidArgument(f"unknown bm25 parameter(s): {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(DEFAULT_PARAMS)})")
    for key, lo, hi in (("k1", 0.0, math.inf), ("b", 0.0, 1.0)):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidArgument(f"bm25 parameter {key} must be a number, got {v!r}")
        if not lo <= v <= hi:
            rng = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
            raise InvalidArgument(f"bm25 parameter {key} must be {rng}, got {v!r}")
        p[key] = float(v)
    if p["method"] not in BM25_METHODS:
        raise InvalidArgument(f"bm25 parameter method must be one of {', '.join(BM25_METHODS)}, got {p['method']!r}")
    return p


def doc_text(doc: Doc) -> str:
    """What BM25 indexes for a document: its title and its text."""
    return f"{doc.title}\n{doc.text}" if doc.title else doc.text


class _QueryTokenizer:
    """Query side of the bm25s tokenizer: same split, stopwords and stemmer; maps to vocab ids.

    Unlike ``bm25s.tokenization.Tokenizer`` it keeps no per-word caches (a long-running service
    would grow them without bound), and it keeps one PyStemmer object per thread (they are not
    thread-safe).
    """

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self.empty_id = vocab.get("")
        self._split = re.compile(TOKEN_PATTERN).findall
        self._stop = frozenset(_infer_stopwords(STOPWORDS))
        self._local = threading.local()

    def _stemmer(self) -> Any:
        st = getattr(self._local, "stemmer", None)
        if st is None:
            st = self._local.stemmer = Stemmer.Stemmer(STEMMER_LANGUAGE)
        return st

    def __call__(self, queries: Sequence[str]) -> list[list[int]]:
        stem_words = self._stemmer().stemWords
        vocab = self.vocab
        out: list[list[int]] = []
        for q in queries:
            words = [w for w in self._split(q.lower()) if w not in self._stop]
            ids = [vocab[s] for s in stem_words(words) if s in vocab] if words else []
            out.append(ids)
        return out


class BM25Retriever(Retriever):
    """A loaded BM25 index.  ``threads`` > 1 scores the queries of a batch in a thread pool."""

    def __init__(self, model: bm25s.BM25, store: DocStore, info: IndexInfo, threads: int = 0) -> None:
        self.model = model
        self.store = store
        self._info = info
        self.threads = max(0, int(threads))
        self._tokenize = _QueryTokenizer(model.vocab_dict)
        self.num_docs = int(model.scores["num_docs"])
        if self.num_docs != len(store):
            raise InvalidArgument(f"BM25 index has {self.num_docs} documents but the document store has {len(store)}")

    # --- build / load ------------------------------------------------------------------------

    @staticmethod
    def build(docs: Iterable[Doc], out_dir: str | os.PathLike[str], show_progress: bool = True,
              params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Tokenize and index ``docs`` into ``out_dir``; returns ``(num_documents, params)``."""
        p = check_bm25_params(params)
        out = Path(out_dir)
        writer = DocStoreWriter(out)
        tokenizer = Tokenizer(lower=True, splitter=TOKEN_PATTERN, stopwords=STOPWORDS,
                              stemmer=Stemmer.Stemmer(STEMMER_LANGUAGE))

        def texts() -> Iterator[str]:
            for d in docs:
                writer.add(d)
                yield doc_text(d)

        try:
            stream = tokenizer.streaming_tokenize(texts(), update_vocab=True)
            ids = list(tqdm(stream, desc="bm25: tokenize", unit="doc", disable=not show_progress))
        except BaseException:
            writer.abort()
            raise
        n = writer.close()
        if n == 0:
            raise InvalidArgument("the corpus has no documents")
        model = bm25s.BM25(k1=float(p["k1"]), b=float(p["b"]), method=str(p["method"]))
        model.index(Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=show_progress)
        model.save(str(out / BM25_SUBDIR), show_progress=False)
        full = {**p, "tokenizer": {"pattern": TOKEN_PATTERN, "stopwords": STOPWORDS, "stemmer": STEMMER_LANGUAGE,
                                   "lower": True}, "fields": "title+text", "vocab_size": len(model.vocab_dict)}
        return n, full

    @staticmethod
    def required_files() -> list[str]:
        return [f"{BM25_SUBDIR}/{f}" for f in BM25_FILES]

    @classmethod
    def load(cls, index_dir: str | os.PathLike[str], info: IndexInfo, threads: int = 0) -> BM25Retriever:
        d = Path(index_dir)
        try:
            model = bm25s.BM25.load(str(d / BM25_SUBDIR), load_corpus=False, mmap=False, show_progress=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"{d}: BM25 files are unreadable: {exc}") from None
        return cls(model, DocStore(d), info, threads=threads)

    # --- Retriever ---------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int) -> list[list[Doc]]:
        qs = check_queries(queries)
        k = min(check_k(k), self.num_docs)
        if not qs:
            return []
        token_ids = self._tokenize(qs)
        # Only documents that share a term with the query are hits.  bm25s ranks every document, so
        # a query with fewer than k matching documents would be padded with unrelated ones that
        # scored exactly 0 (and a query with no known term with the first k rows): those are cut.
        results: list[list[Doc]] = [[] for _ in qs]
        live = [i for i, t in enumerate(token_ids) if t]
        if live:
            rows, scores = self.model.retrieve(
                [token_ids[i] for i in live], k=k, sorted=True, return_as="tuple", show_progress=False,
                n_threads=self.threads,
            )
            for i, r, s in zip(live, rows, scores):
                keep = np.asarray(s) != 0.0
                results[i] = self.store.docs(np.asarray(r)[keep], np.asarray(s)[keep])
        return results

    def get(self, ids: Sequence[str]) -> list[Doc]:
        return self.store.get(list(ids))

    def info(self) -> IndexInfo:
        return self._info

    def close(self) -> None:
        self.store.close()
