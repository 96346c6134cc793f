"""The naive-RAG baseline cache (spec §5): keys, the Redis store, export / import."""

from s3core.cache.baseline import (
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_WRITES,
    BaselineCache,
    BaselineRecord,
    ImportResult,
    connect,
    redis_url,
)
from s3core.cache.keys import (
    SCORING_VERSION,
    SPAN_ONLY_JUDGE,
    BaselineKey,
    KeyFn,
    baseline_dataset,
    index_fingerprint,
    judge_id,
    key_factory,
)

__all__ = [
    "CACHE_HITS",
    "CACHE_MISSES",
    "CACHE_WRITES",
    "SCORING_VERSION",
    "SPAN_ONLY_JUDGE",
    "BaselineCache",
    "BaselineKey",
    "BaselineRecord",
    "ImportResult",
    "KeyFn",
    "baseline_dataset",
    "connect",
    "index_fingerprint",
    "judge_id",
    "key_factory",
    "redis_url",
]
