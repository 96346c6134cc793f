"""The naive-RAG baseline cache in Redis (spec §5).

Each baseline is one Redis string ``<namespace>:baseline:v1:<digest>`` holding a JSON object: the
key fields (``key``, so an export can be re-imported and audited) and the scored answer
(``answer``, ``genacc``, ``em``, ``f1``, ``span``, ``judge``, ``doc_ids``, ``question_id``,
``created_at``).  Reads use ``MGET``, writes one ``MULTI``/``EXEC`` pipeline per batch, so a batch is
stored entirely or not at all.

Every Redis connection / timeout failure surfaces as :class:`s3core.errors.Unavailable` with the URL.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from prometheus_client import Counter

from s3core.cache.keys import KEY_VERSION, BaselineKey
from s3core.errors import DataError, InvalidArgument, S3Error, Unavailable
from s3core.io import atomic_open

__all__ = [
    "CACHE_HITS",
    "CACHE_MISSES",
    "CACHE_WRITES",
    "EXPORT_FORMAT",
    "BaselineCache",
    "BaselineRecord",
    "ImportResult",
    "connect",
    "redis_url",
]

EXPORT_FORMAT = "s3-baseline-cache"
EXPORT_VERSION = 1
_CHUNK = 500  # keys per MGET / pipeline

CACHE_HITS = Counter("s3_baseline_cache_hits_total", "Naive-RAG baseline cache lookups that found a baseline.")
CACHE_MISSES = Counter("s3_baseline_cache_misses_total", "Naive-RAG baseline cache lookups that found nothing.")
CACHE_WRITES = Counter("s3_baseline_cache_writes_total", "Naive-RAG baselines written to the cache.")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BaselineRecord:
    """One scored naive-RAG answer."""

    question_id: str
    answer: str
    genacc: bool
    em: bool
    f1: float
    span: bool
    judge: bool | None  # None: the judge was not asked (span matched, or span-only scoring)
    doc_ids: tuple[str, ...] = ()
    created_at: str = field(default_factory=_now)

    @property
    def acc(self) -> float:
        """GenAcc as a number, the baseline term of the GBR reward."""
        return 1.0 if self.genacc else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "question_id": self.question_id, "answer": self.answer, "genacc": self.genacc, "em": self.em,
            "f1": self.f1, "span": self.span, "judge": self.judge, "doc_ids": list(self.doc_ids),
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "BaselineRecord":
        """Validate and build; raises InvalidArgument naming the bad field."""
        if not isinstance(d, dict):
            raise InvalidArgument(f"baseline record must be an object, got {type(d).__name__}")

        def need(name: str, types: tuple[type, ...], what: str) -> Any:
            if name not in d:
                raise InvalidArgument(f"missing field {name!r}")
            v = d[name]
            if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
                raise InvalidArgument(f"field {name!r} must be {what}, got {v!r}")
            return v

        qid = need("question_id", (str,), "a string")
        answer = need("answer", (str,), "a string")
        genacc = need("genacc", (bool,), "true or false")
        em = need("em", (bool,), "true or false")
        span = need("span", (bool,), "true or false")
        f1 = float(need("f1", (int, float), "a number"))
        if not (math.isfinite(f1) and 0.0 <= f1 <= 1.0):
            raise InvalidArgument(f"field 'f1' must be in [0, 1], got {f1!r}")
        if "judge" not in d:
            raise InvalidArgument("missing field 'judge'")
        judge = d["judge"]
        if judge is not None and not isinstance(judge, bool):
            raise InvalidArgument(f"field 'judge' must be true, false or null, got {judge!r}")
        doc_ids = need("doc_ids", (list,), "a list of strings")
        if not all(isinstance(x, str) for x in doc_ids):
            raise InvalidArgument("field 'doc_ids' must be a list of strings")
        created = d.get("created_at", "")
        if not isinstance(created, str):
            raise InvalidArgument(f"field 'created_at' must be a string, got {created!r}")
        if genacc != (span or bool(judge)):
            raise InvalidArgument(f"inconsistent record: genacc={genacc} but span={span}, judge={judge}")
        return cls(question_id=qid, answer=answer, genacc=genacc, em=em, f1=f1, span=span, judge=judge,
                   doc_ids=tuple(doc_ids), created_at=created)


@dataclass
class ImportResult:
    total: int = 0
    written: int = 0
    skipped: int = 0  # already present and overwrite=False


def redis_url(url: str = "", port: int = 6390) -> str:
    """``url``, or the local redis-server of ``s3 up`` (``RedisConfig.port``) when empty."""
    return url or f"redis://127.0.0.1:{port}/0"


def _describe(client: Any) -> str:
    try:
        kw = client.connection_pool.connection_kwargs
    except AttributeError:
        return "redis"
    if kw.get("path"):
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def connect(url: str, timeout: float = 2.0) -> redis.Redis:
    """A client for ``url`` with short timeouts, checked with ``PING``.

    Unreachable → :class:`Unavailable` ("redis at URL unreachable: ..."); a malformed URL →
    :class:`InvalidArgument`.
    """
    if not url:
        raise InvalidArgument("redis URL is empty (set redis.url, e.g. redis://127.0.0.1:6390/0)")
    try:
        from s3core.runtime.redis_server import auth_kwargs

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 10.0),
                                      retry_on_timeout=False, **auth_kwargs(url))
    except ValueError as exc:
        raise InvalidArgument(f"invalid redis URL {url!r}: {exc}") from None
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        client.close()
        raise Unavailable(f"redis at {url} unreachable: {exc}") from None
    except redis.exceptions.RedisError as exc:  # e.g. AUTH required
        client.close()
        raise Unavailable(f"redis at {url} refused the connection: {exc}") from None
    return client


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class BaselineCache:
    """Naive-RAG baselines in Redis under ``<namespace>:baseline:v1:*``."""

    def __init__(self, client: Any, namespace: str = "s3", url: str | None = None) -> None:
        if not namespace or ":" in namespace or "*" in namespace:
            raise InvalidArgument(f"cache namespace must be a non-empty word without ':' or '*', got {namespace!r}")
        self.client = client
        self.namespace = namespace
        self.url = url or _describe(client)

    @classmethod
    def from_url(cls, url: str, namespace: str = "s3", timeout: float = 2.0) -> "BaselineCache":
        return cls(connect(url, timeout), namespace=namespace, url=url)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def pattern(self) -> str:
        return f"{self.namespace}:baseline:{KEY_VERSION}:*"

    def redis_key(self, key: BaselineKey) -> str:
        return key.redis_key(self.namespace)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise Unavailable(f"redis at {self.url} unreachable: {exc} (during {what})") from None
        except redis.exceptions.RedisError as exc:
            raise S3Error(f"redis at {self.url}: {what} failed: {exc}") from None

    def _decode(self, rkey: str, raw: Any) -> BaselineRecord:
        try:
            d = json.loads(raw)
            return BaselineRecord.from_dict(d)
        except (ValueError, InvalidArgument) as exc:
            raise DataError(f"{self.url} {rkey}", None, f"corrupt baseline entry: {exc}") from None

    @staticmethod
    def _encode(key: BaselineKey, rec: BaselineRecord) -> str:
        return json.dumps({"key": key.to_dict(), **rec.to_dict()}, ensure_ascii=False, sort_keys=True)

    # -- reads ----------------------------------------------------------------------------------
    def get(self, key: BaselineKey) -> BaselineRecord | None:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[BaselineKey]) -> list[BaselineRecord | None]:
        """Look up many keys with ``MGET`` (chunks of 500); counts hits and misses."""
        rkeys = [self.redis_key(k) for k in keys]
        out: list[BaselineRecord | None] = []
        for chunk in _chunks(rkeys, _CHUNK):
            raws = self._call("MGET", self.client.mget, list(chunk))
            for rk, raw in zip(chunk, raws):
                out.append(None if raw is None else self._decode(rk, raw))
        hits = sum(r is not None for r in out)
        CACHE_HITS.inc(hits)
        CACHE_MISSES.inc(len(out) - hits)
        return out

    def count(self) -> int:
        """Number of baselines in this namespace (a ``SCAN``; no ``KEYS``)."""
        return sum(1 for _ in self._scan())

    def _scan(self) -> Iterator[str]:
        it = self._call("SCAN", self.client.scan_iter, match=self.pattern, count=1000)
        while True:
            try:
                k = self._call("SCAN", next, it)
            except StopIteration:
                return
            yield k.decode() if isinstance(k, bytes) else k

    # -- writes ---------------------------------------------------------------------------------
    def put_many(self, entries: Sequence[tuple[BaselineKey, BaselineRecord]], overwrite: bool = True) -> int:
        """Store entries in one ``MULTI``/``EXEC`` per 500 (all or nothing per chunk).

        ``overwrite=False`` keeps existing baselines (``SET NX``).  Returns the number written.
        """
        written = 0
        for chunk in _chunks(list(entries), _CHUNK):
            pipe = self.client.pipeline(transaction=True)
            for key, rec in chunk:
                pipe.set(self.redis_key(key), self._encode(key, rec), nx=not overwrite)
            results = self._call("SET pipeline", pipe.execute)
            written += sum(1 for r in results if r)
        CACHE_WRITES.inc(written)
        return written

    def put(self, key: BaselineKey, rec: BaselineRecord, overwrite: bool = True) -> bool:
        return self.put_many([(key, rec)], overwrite) == 1

    def clear(self) -> int:
        """Delete every baseline of this namespace; returns how many."""
        keys = list(self._scan())
        for chunk in _chunks(keys, _CHUNK):
            self._call("DEL", self.client.delete, *chunk)
        return len(keys)

    # -- export / import ------------------------------------------------------------------------
    def export_json(self, path: str | os.PathLike[str]) -> int:
        """Write every baseline to ``path`` (atomically) as
        ``{"format": "s3-baseline-cache", "version": 1, "namespace", "exported_at", "count",
        "records": [{"key": {...}, "answer", ...}, ...]}``, sorted by Redis key.  Returns the count."""
        rkeys = sorted(self._scan())
        records: list[dict[str, Any]] = []
        for chunk in _chunks(rkeys, _CHUNK):
            raws = self._call("MGET", self.client.mget, list(chunk))
            for rk, raw in zip(chunk, raws):
                if raw is None:  # deleted between SCAN and MGET
                    continue
                try:
                    d = json.loads(raw)
                    BaselineKey.from_dict(d.get("key") if isinstance(d, dict) else None)
                    BaselineRecord.from_dict(d)
                except (ValueError, InvalidArgument) as exc:
                    raise DataError(f"{self.url} {rk}", None, f"corrupt baseline entry: {exc}") from None
                records.append(d)
        return self._write_export(path, records, self.namespace)

    @staticmethod
    def _write_export(path: str | os.PathLike[str], records: list[dict[str, Any]], namespace: str) -> int:
        doc = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "namespace": namespace,
               "exported_at": _now(), "count": len(records), "records": records}
        with atomic_open(path) as fh:
            json.dump(doc, fh, ensure_ascii=False, indent=1, sort_keys=True)
            fh.write("\n")
        return len(records)

    @staticmethod
    def write_export(path: str | os.PathLike[str], entries: Sequence[tuple[BaselineKey, BaselineRecord]],
                     namespace: str = "s3") -> int:
        """Write ``entries`` as an export file (the format of :meth:`export_json`, sorted by Redis
        key) without a Redis: ``s3 cache import`` loads it later.  Returns the count."""
        pairs = sorted(((k.redis_key(namespace), {"key": k.to_dict(), **r.to_dict()}) for k, r in entries),
                       key=lambda kv: kv[0])
        return BaselineCache._write_export(path, [d for _, d in pairs], namespace)

    @staticmethod
    def read_export(path: str | os.PathLike[str]) -> list[tuple[BaselineKey, BaselineRecord]]:
        """Parse and validate an export file; any bad record → DataError naming its index."""
        p = Path(path)
        if not p.is_file():
            raise DataError(str(p), None, "no such file")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(str(p), None, f"not valid UTF-8 ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise DataError(str(p), exc.lineno, f"invalid JSON: {exc.msg}") from None
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
            raise DataError(str(p), None, f"not a baseline-cache export (expected \"format\": \"{EXPORT_FORMAT}\")")
        if doc.get("version") != EXPORT_VERSION:
            raise DataError(str(p), None, f"unsupported export version {doc.get('version')!r} (this reads {EXPORT_VERSION})")
        records = doc.get("records")
        if not isinstance(records, list):
            raise DataError(str(p), None, "'records' must be a list")
        out: list[tuple[BaselineKey, BaselineRecord]] = []
        for i, r in enumerate(records):
            try:
                if not isinstance(r, dict):
                    raise InvalidArgument(f"expected an object, got {type(r).__name__}")
                if "key" not in r:
                    raise InvalidArgument("missing field 'key'")
                key = BaselineKey.from_dict(r["key"])
                rec = BaselineRecord.from_dict(r)
            except InvalidArgument as exc:
                raise DataError(str(p), None, f"record {i}: {exc}") from None
            out.append((key, rec))
        return out

    def import_json(self, path: str | os.PathLike[str], overwrite: bool = False) -> ImportResult:
        """Load an export.  Every record is validated before anything is written (a bad record →
        DataError "record N: ..." and Redis untouched).  Keys are recomputed from the key fields, so
        an export from an older key layout lands under the current keys.  ``overwrite=False`` skips
        baselines already present."""
        entries = self.read_export(path)
        written = self.put_many(entries, overwrite=overwrite)
        return ImportResult(total=len(entries), written=written, skipped=len(entries) - written)
