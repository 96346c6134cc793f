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
INDEX_DOCUMENTS = Gauge("s3_retriever_index_documents", "Documents in each loaded index.", ["backend", "index"])

# dynamic batching (retriever.batch_window_ms > 0): how requests were coalesced into backend searches
BATCHER_REQUESTS = Histogram(
    "s3_retriever_batcher_requests_per_batch", "Search requests coalesced into one backend search.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCHER_QUERIES = Histogram(
    "s3_retriever_batcher_queries_per_batch", "Distinct queries in one coalesced backend search.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
BATCHER_QUEUE_WAIT = Histogram(
    "s3_retriever_batcher_queue_wait_seconds", "Time a Search request waited before its batch started.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCHER_QUEUE_QUERIES = Gauge("s3_retriever_batcher_queue_queries", "Queries waiting for a backend search.", ["index"])
BATCHER_REJECTED = Counter(
    "s3_retriever_batcher_rejected_total", "Search requests refused (RESOURCE_EXHAUSTED) because the queue was full."
)
