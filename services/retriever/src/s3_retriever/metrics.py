"""Prometheus metrics of the retriever service (the gRPC server metrics live in s3core.telemetry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from s3core.telemetry.metrics import LATENCY_BUCKETS

QUERIES = Counter("s3_retriever_queries_total", "Queries searched (each query of a batch counts once).")
SEARCH_SECONDS = Histogram(
    "s3_retriever_search_seconds", "Time to search one batch of queries (index work only).", buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "s3_retriever_batch_size", "Queries per search request.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
INDEX_DOCUMENTS = Gauge("s3_retriever_index_documents", "Documents in each loaded index.", ["backend"])
