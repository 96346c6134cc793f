"""Prometheus metrics of the generator service (``s3_generator_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from s3core.telemetry.metrics import LATENCY_BUCKETS

REQUESTS = Counter("s3_generator_requests_total", "Generator RPCs received.", ["rpc"])
GENERATE_SECONDS = Histogram(
    "s3_generator_generate_seconds", "Time of one model batch (prefill + decode).", buckets=LATENCY_BUCKETS
)
TOKENS = Counter("s3_generator_tokens_total", "Tokens processed by the model.", ["kind"])
TOKENS_PER_SECOND = Gauge("s3_generator_tokens_per_second", "Completion tokens per second of the last batch.")
BATCH_SIZE = Histogram(
    "s3_generator_batch_size", "Sequences in one model batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)

# Make the labelled series visible from the start (dashboards, tests).
for _kind in ("prompt", "completion"):
    TOKENS.labels(_kind)
for _rpc in ("Answer", "Judge", "Complete", "ModelInfo"):
    REQUESTS.labels(_rpc)


def observe_batch(batch_size: int, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
    """A :data:`s3core.generation.base.BatchObserver` that feeds the metrics above."""
    BATCH_SIZE.observe(batch_size)
    GENERATE_SECONDS.observe(seconds)
    TOKENS.labels("prompt").inc(prompt_tokens)
    TOKENS.labels("completion").inc(completion_tokens)
    if seconds > 0:
        TOKENS_PER_SECOND.set(completion_tokens / seconds)
