"""Retrieval backends (BM25 via bm25s, dense via sentence-transformers + faiss) and index files.

``build_index`` writes an index directory (``manifest.json`` + backend files + document store);
``load_index`` validates it and returns a :class:`Retriever`.  Nothing here imports gRPC, and the
dense backend imports torch / sentence-transformers only when it is used.
"""

from s3core.retrieval.base import IndexInfo, Retriever
from s3core.retrieval.index import FORMAT_VERSION, build_index, load_index, read_manifest

__all__ = ["FORMAT_VERSION", "IndexInfo", "Retriever", "build_index", "load_index", "read_manifest"]
