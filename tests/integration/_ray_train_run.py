"""Run by ``test_train_ray.py`` inside its own network namespace (Ray binds beyond loopback).

Starts a real redis-server, a retriever (BM25 over the synthetic world), a generator and one searcher
per backend (tiny model) on loopback, then trains the same 2-step GRPO job twice -- with
``train.backend: ray`` and two Ray Train workers (step 1, then a resumed job for step 2), and with
``local`` -- into two checkpoint dirs, runs a ray job whose rank 0 fails, and writes what the test
checks to ``<out>/result.json``.

    python _ray_train_run.py WORLD_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

KNOBS = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 12, "max_obs_tokens": 200}
STEPS = 2


def config(world: Path, backend: str, ckdir: Path, services: dict[str, str], searcher: str, steps: int = STEPS) -> Any:
    from s3core.config import load_config

    model = str(world / "tiny")
    return load_config(overrides={
        "search": KNOBS,
        "generator": {"judge": "none", "max_new_tokens": 8},
        "searcher": {"model": model},
        "reward": {"on_missing_baseline": "compute"},
        # two optimiser steps of two trajectories per RL step, twice: each rank has one row in each;
        # the entropy bonus keeps the gradient nonzero even where every reward ties
        "rl": {"algorithm": "grpo", "group_size": 2, "actor_lr": 1e-3, "ppo_epochs": 2, "mini_batch_size": 2,
               "micro_batch_size": 2, "entropy_coef": 0.01, "device": "cpu", "threads": 1},
        "train": {"questions": [str(world / "data" / "synth_1hop.jsonl")], "filter": False, "batch_size": 2,
                  "steps": steps, "checkpoint_dir": str(ckdir), "retriever": services["retriever"],
                  "generator": services["generator"], "searcher": searcher, "backend": backend,
                  "num_workers": 2},
    })


def main(world: Path, out: Path) -> None:
    from s3core.cache.baseline import redis_url
    from s3core.config import GeneratorConfig
    from s3core.rpc.clients import SearcherClient
    from s3core.runtime.local import LocalStack
    from s3core.train.run import TrainJob, run_training

    stack = LocalStack(out / "stack", detach=False)
    result: dict[str, Any] = {}
    try:
        redis = stack.start_redis()
        services = {"retriever": stack.start_retriever(str(world / "idx")).address,
                    "generator": stack.start_generator(GeneratorConfig(backend="hf", model=str(world / "tiny"))).address}
        # the ray run in two jobs: step 1, then --resume to step 2 (every rank loads the step-1 checkpoint)
        for name, backend, steps, resume in (("ray-1", "ray", 1, False), ("ray", "ray", STEPS, True),
                                             ("local", "local", STEPS, False)):
            searcher = stack.start_service(f"searcher-{backend}", "s3_searcher", [
                "--retriever", services["retriever"], "--model", str(world / "tiny"), "--threads", "1"]).address
            cfg = config(world, backend, out / f"ckpt-{backend}", services, searcher, steps)
            progress: list[list[Any]] = []
            t0 = time.perf_counter()
            summary = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url("", redis.grpc_port),
                                            resume=resume, progress=lambda f, m, _p=progress: _p.append([f, m])))
            seconds = time.perf_counter() - t0
            client = SearcherClient(searcher)
            info = client.policy_info()
            client.close()
            result[name] = {"summary": {**summary.to_json(), "history": summary.history}, "seconds": seconds,
                            "progress": progress,
                            "searcher": {"version": info.version, "checkpoint_path": info.checkpoint_path}}
            print(f"{name}: steps {summary.start_step}..{summary.steps} in {seconds:.1f}s", flush=True)
        # rank 0 fails (the ray run's searcher serves version 2; a fresh run starts from 0): the caller
        # gets rank 0's own error, and the other rank is let go
        cfg = config(world, "ray", out / "ckpt-ray-error", services, stack.get("searcher-ray").address)
        t0 = time.perf_counter()
        try:
            run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url("", redis.grpc_port),
                                  resume=False))
            result["error"] = None
        except Exception as e:  # noqa: BLE001 - the error is the result
            result["error"] = {"type": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - t0}
    finally:
        stack.down()
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
