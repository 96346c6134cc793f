"""``s3-retriever`` / ``python -m s3_retriever``: the retriever service process.

Binds gRPC (``s3.v1.Retriever`` + health + reflection) and the HTTP side-server (``/metrics``,
``/healthz``, ``POST /retrieve``), loads the index directories in a thread, then reports SERVING
and writes the ready file.  Config comes from ``--config``/``--preset`` (``retriever.*``), and the
command-line flags override it.

Sharded indexes (:mod:`s3core.retrieval.shards`): a sharded build's directory (``shards.json``),
or two or more ``--index`` directories that are shards of one set, are served as one index (one
shard per local GPU in the GPU profile); one shard directory alone is served as itself, for the
client-side fan-out over per-shard servers.  A shard
set that is incomplete or has a shard that fails to load is never served in part: the server logs
one line naming the shard and the reason, stays up with health NOT_SERVING (``/healthz`` 503, RPCs
``UNAVAILABLE``) and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from s3.v1 import retriever_pb2_grpc
from s3_retriever.http_shim import setup_http
from s3_retriever.servicer import SERVICE_NAME, RetrieverCore, RetrieverServicer
from s3core.config import load_config
from s3core.errors import S3Error
from s3core.retrieval import Retriever, load_index
from s3core.retrieval.shards import ShardSetError, load_shard_set, plan_index_dirs, shard_block
from s3core.rpc.service_main import NotServing, ServiceSpec, add_common_args, config_error, run_service
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
                        "index; a sharded build's directory, or several shards of one set, are served as one "
                        "index; default from config: retriever.index)")
    p.add_argument("--threads", type=int, help="search threads in bm25s / faiss (0 = library default)")
    p.add_argument("--device", help="dense: where queries are encoded: cpu, cuda, cuda:N (config retriever.device)")
    p.add_argument("--faiss-gpus", type=int, metavar="N",
                   help="dense: spread the faiss index over N local GPUs, -1 = all (needs faiss-gpu; "
                        "config retriever.faiss_gpus; default 0 = host memory)")
    p.add_argument("--max-k", type=int, help="largest k a request may ask for (config retriever.max_k)")
    p.add_argument("--max-queries", type=int, help="largest query batch (config retriever.max_queries)")
    p.add_argument("--batch-window-ms", type=float,
                   help="coalesce concurrent searches arriving within this window (0 = off; config "
                        "retriever.batch_window_ms)")
    p.add_argument("--batch-max-queries", type=int,
                   help="most queries in one coalesced search (config retriever.batch_max_queries)")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {}
    for flag, key in (("host", "host"), ("port", "port"), ("http_port", "http_port"), ("threads", "threads"),
                      ("max_k", "max_k"), ("max_queries", "max_queries"), ("device", "device"),
                      ("faiss_gpus", "faiss_gpus"), ("batch_window_ms", "batch_window_ms"),
                      ("batch_max_queries", "batch_max_queries")):
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
        groups = plan_index_dirs(dirs)  # fail fast, before binding, on a path that is not an index
    except S3Error as exc:
        return config_error("retriever", exc)

    core = RetrieverCore(rc)
    servicer = RetrieverServicer(core)
    loaded = threading.Event()

    def load() -> None:
        ready: list[tuple[Retriever, dict[str, Any] | None, str]] = []
        try:
            for g in groups:
                if g.sharded:
                    ready.append((load_shard_set(g.dirs, threads=rc.threads, manifests=g.manifests, absent=g.absent,
                                                 device=rc.device, faiss_gpus=rc.faiss_gpus),
                                  None, ", ".join(g.dirs)))
                else:
                    ready.append((load_index(g.dirs[0], threads=rc.threads, device=rc.device, faiss_gpus=rc.faiss_gpus),
                                  shard_block(g.manifests[0]), g.dirs[0]))
        except ShardSetError as exc:
            for r, _, _ in ready:
                r.close()
            core.not_serving_reason = str(exc)
            logger.error("NOT serving: %s; health stays NOT_SERVING (no partial results)", exc)
            raise NotServing(str(exc)) from None
        except BaseException:
            for r, _, _ in ready:
                r.close()
            raise
        for retriever, shard, where in ready:
            core.indexes.add(retriever, shard=shard)
            info = retriever.info()
            what = f", shard {shard['index']} of {shard['count']} (rows {shard['row_start']}..{shard['row_end']})" \
                if shard else ""
            logger.info("loaded index %r (%s%s, %d documents) from %s", info.name, info.backend, what,
                        info.num_documents, where)
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
    return run_service(spec, rc.host, rc.port, rc.http_port, args.ready_file, cleanup=core.close)


if __name__ == "__main__":
    raise SystemExit(main())
