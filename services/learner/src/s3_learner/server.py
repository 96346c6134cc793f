"""``s3-learner`` / ``python -m s3_learner``: the learner service process.

    python -m s3_learner --checkpoint-dir /ckpt --model Qwen/Qwen2.5-7B-Instruct --config train.yaml

Ports bind first (health NOT_SERVING); the policy, critic, reference model and optimisers load in a
thread -- resuming from the newest valid checkpoint in ``--checkpoint-dir`` unless ``--no-resume``
-- then health turns SERVING and the ready file is written (:mod:`s3core.rpc.service_main`).  The
RL knobs come from the config's ``rl`` section, checkpointing from ``train`` (keep_last), the policy
from ``learner.model`` (default: ``searcher.model``).  Training metrics (``s3_train_*``) are on
``/metrics``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

import grpc

from s3.v1 import learner_pb2_grpc
from s3_learner.servicer import SERVICE_NAME, LearnerServicer
from s3core.config import Config, load_config
from s3core.errors import S3Error, Unavailable
from s3core.rpc.service_main import ServiceSpec, add_common_args, config_error, run_service
from s3core.telemetry.logging import setup_logging

logger = logging.getLogger("s3_learner")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3-learner",
        description="s3 learner service: PPO/GRPO updates of the searcher policy from scored trajectories "
        "(s3.v1.Learner), checkpoints, and policy versions published as model folders for the searcher; "
        "HTTP /metrics and /healthz on the side.",
    )
    add_common_args(p)
    p.add_argument("--checkpoint-dir", help="checkpoints and published policies (config train.checkpoint_dir); "
                                            "shared with the searcher")
    p.add_argument("--model", help="initial policy: model folder, hub name or embedded:smollm2-135m-instruct "
                                   "(config learner.model, else searcher.model)")
    p.add_argument("--algorithm", choices=["ppo", "grpo"], help="config rl.algorithm")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (config rl.device)")
    p.add_argument("--threads", type=int, help="torch CPU threads (config rl.threads)")
    p.add_argument("--no-resume", action="store_true", help="start from the model even if checkpoints exist")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    learner = {k: v for k, v in (("host", args.host), ("port", args.port), ("http_port", args.http_port),
                                 ("model", args.model)) if v is not None}
    rl = {k: v for k, v in (("algorithm", args.algorithm), ("device", args.device), ("threads", args.threads))
          if v is not None}
    if learner:
        out["learner"] = learner
    if rl:
        out["rl"] = rl
    if args.checkpoint_dir:
        out["train"] = {"checkpoint_dir": args.checkpoint_dir}
    return out


class CoreHolder:
    """The LearnerCore once loaded; RPCs before that get UNAVAILABLE."""

    def __init__(self, cfg: Config, resume: bool) -> None:
        self.cfg = cfg
        self.resume = resume
        self._core: Any = None
        self.vocab_size = 0

    @property
    def core(self) -> Any:
        if self._core is None:
            raise Unavailable("the learner is still loading its models")
        return self._core

    def load(self) -> None:
        from s3core.generation.models import resolve_model
        from s3core.train.learner_core import LearnerCore

        cfg = self.cfg
        if cfg.rl.threads:
            import torch

            torch.set_num_threads(cfg.rl.threads)
        model = resolve_model(cfg.learner.model or cfg.searcher.model)
        core = LearnerCore(cfg, model, cfg.train.checkpoint_dir, resume=self.resume)
        emb = core.trainer.policy.get_input_embeddings() if hasattr(core.trainer, "policy") else None
        self.vocab_size = int(emb.weight.shape[0]) if emb is not None else 0
        self._core = core
        logger.info("learner ready: %s, %s, step %d, checkpoints in %s", model, cfg.rl.algorithm, core.step, core.root)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = load_config(args.config, presets=args.preset, overrides=_overrides(args))
    except S3Error as exc:
        return config_error("learner", exc)
    holder = CoreHolder(cfg, resume=not args.no_resume)
    servicer = LearnerServicer(holder, cfg.learner.max_trajectories, cfg.learner.max_tokens)

    def register(server: grpc.aio.Server) -> None:
        learner_pb2_grpc.add_LearnerServicer_to_server(servicer, server)

    spec = ServiceSpec(name="learner", service_names=[SERVICE_NAME], register=register, load=holder.load,
                       is_ready=lambda: holder._core is not None, max_message_bytes=256 * 1024 * 1024,
                       max_concurrent_rpcs=cfg.learner.max_concurrent_rpcs)
    return run_service(spec, cfg.learner.host, cfg.learner.port, cfg.learner.http_port, args.ready_file)


if __name__ == "__main__":
    raise SystemExit(main())
