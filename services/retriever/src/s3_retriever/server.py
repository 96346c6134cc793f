"""``s3-retriever`` / ``python -m s3_retriever``: the retriever service process.

Binds gRPC (``s3.v1.Retriever`` + health + reflection) and the HTTP side-server (``/metrics``,
``/healthz``, ``POST /retrieve``), loads the index directories in a thread, then reports SERVING
and writes the ready file.  Config comes from ``--config``/``--preset`` (``retriever.*``), and the
command-line flags override it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from typing import Any

from s3.v1 import retriever_pb2_grpc
from s3_retriever.http_shim import setup_http
from s3_retriever.servicer import SERVICE_NAME, RetrieverCore, RetrieverServicer
from s3core.config import load_config
from s3core.errors import S3Error
from s3core.retrieval import load_index, read_manifest
from s3core.rpc.service_main import ServiceSpec, add_common_args, serve
from s3core.telemetry.logging import setup_logging

logger = logging.getLogger("s3_retriever")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3-retriever",
        description="s3 retriever service: gRPC s3.v1.Retriever over BM25 / dense index directories, "
        "plus HTTP /metrics, /healthz and a Search-R1 compatible POST /retrieve.",
    )
    add_common_args(p)
    p.add_argument("--index", action="append", metavar="DIR",
                   help="index directory written by `s3 index build` (repeatable; the first is the default "
                        "index; default from config: retriever.index)")
    p.add_argument("--threads", type=int, help="search threads in bm25s / faiss (0 = library default)")
    p.add_argument("--max-k", type=int, help="largest k a request may ask for (config retriever.max_k)")
    p.add_argument("--max-queries", type=int, help="largest query batch (config retriever.max_queries)")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {}
    for flag, key in (("host", "host"), ("port", "port"), ("http_port", "http_port"), ("threads", "threads"),
                      ("max_k", "max_k"), ("max_queries", "max_queries")):
        value = getattr(args, flag)
        if value is not None:
            r[key] = value
    if args.index:
        r["index"] = args.index[0]
    return {"retriever": r} if r else {}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = load_config(args.config, args.preset, overrides=_overrides(args))
        rc = cfg.retriever
        dirs = list(args.index or ([rc.index] if rc.index else []))
        if not dirs:
            parser.error("no index: pass --index DIR (or set retriever.index in the config)")
        for d in dirs:  # fail fast, before binding, on a path that is not an index
            read_manifest(d)
    except S3Error as exc:
        print(f"s3-retriever: error: {exc}", file=sys.stderr)
        return 2

    core = RetrieverCore(rc)
    servicer = RetrieverServicer(core)
    loaded = threading.Event()

    def load() -> None:
        for d in dirs:
            retriever = load_index(d, threads=rc.threads)
            core.indexes.add(retriever)
            info = retriever.info()
            logger.info("loaded index %r (%s, %d documents) from %s", info.name, info.backend, info.num_documents, d)
        loaded.set()

    spec = ServiceSpec(
        name="retriever",
        service_names=[SERVICE_NAME],
        register=lambda server: retriever_pb2_grpc.add_RetrieverServicer_to_server(servicer, server),
        load=load,
        is_ready=loaded.is_set,
        setup_http=lambda side: setup_http(core, side),
        max_concurrent_rpcs=rc.max_concurrent_rpcs,
    )
    try:
        asyncio.run(serve(spec, rc.host, rc.port, rc.http_port, args.ready_file))
    except S3Error as exc:
        print(f"s3-retriever: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
