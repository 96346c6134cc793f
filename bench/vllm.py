"""vLLM vs HF generate for s3 rollouts, and an in-place weight update vs an engine rebuild.

Run it with the vLLM venv's python (``make vllm-env``; on a GPU machine any python with vllm)::

    .venv/vllm/bin/python bench/vllm.py                     # CPU: SmolLM2-135M, fp32
    python bench/vllm.py --model Qwen/Qwen2.5-7B-Instruct --dtype bfloat16 --n-questions 64

In one process, on the same model and the same questions of a synthetic world (BM25 in-process):

1. **rollouts**: ``run_episodes`` (the searcher's s3 loop) with the vLLM policy (``VLLMPolicy``), and at the
   end with the HF policy (``HFPolicy``, the searcher's default); generated tokens per second of each.
   ``rollout_ratio=`` vLLM tok/s / HF tok/s (goal >= 1.5).
2. **policy publish** (between the two): a checkpoint exported the way the learner does (the model's weights, perturbed, written
   by ``save_pretrained``) is published to the running vLLM policy in place (``VLLMPolicy.reload``: vLLM
   ``reload_weights``), and then the way the searcher used to: building a new engine on it.
   ``ratio=`` rebuild seconds / in-place seconds (goal >= 10); the last line printed.

Sampling is greedy by default so both backends decode comparable trajectories.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the package it measures: keep bench/ off the path so `import vllm` finds vLLM.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="embedded:smollm2-135m-instruct", help="policy model (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto (default: %(default)s)")
    p.add_argument("--device", default="", help="HF policy device ('' = cuda when available)")
    p.add_argument("--n-questions", type=int, default=8, help="questions per rollout (default: %(default)s)")
    p.add_argument("--max-turns", type=int, default=1, help="searching turns (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per turn (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=16, help="HF policy batch (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--skip-hf", action="store_true", help="no HF rollout (no rollout_ratio)")
    return p.parse_args(argv)


def perturbed_copy(model_path: str, out: Path, dtype: str) -> Path:
    """The model's weights plus small noise, saved as an HF folder (what the learner exports)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32 if dtype in ("auto", "float32")
                                                 else getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * p.float().std().item() * 0.05)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
    del model
    gc.collect()
    return out


def rollout(policy: object, questions: list, search: object, cfg: object, temperature: float) -> tuple[float, int]:
    from s3core.search.episode import EpisodeStats, run_episodes

    stats = EpisodeStats()
    t0 = time.perf_counter()
    run_episodes(questions, policy, search, cfg, temperature, n=1, seed=0, stats=stats)  # type: ignore[arg-type]
    return time.perf_counter() - t0, stats.generated_tokens


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("S3_VLLM_MAX_MODEL_LEN", "4096")
    from s3core.config import SearchConfig
    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.generation.models import resolve_model
    from s3core.retrieval.index import build_index, load_index
    from s3core.search.policy_vllm import VLLMPolicy

    model = resolve_model(args.model)
    cfg = SearchConfig(initial_k=3, retrieve_k=3, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="s3-bench-vllm-") as tmp:
        root = Path(tmp)
        synthesize(root / "world", seed=0, n_questions=max(args.n_questions, 8))
        build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
        questions = list(load_questions(root / "world" / "synth_1hop.jsonl"))[: args.n_questions]
        index = load_index(root / "idx")
        print(f"model={model} dtype={args.dtype} questions={len(questions)} max_turns={args.max_turns} "
              f"max_new_tokens={args.max_new_tokens} temperature={args.temperature}", flush=True)

        t0 = time.perf_counter()
        policy = VLLMPolicy(model, dtype=args.dtype)
        print(f"vllm_engine_start_seconds={time.perf_counter() - t0:.1f}", flush=True)
        rollout(policy, questions[:1], index.search, cfg, args.temperature)  # warm-up
        secs, toks = rollout(policy, questions, index.search, cfg, args.temperature)
        vllm_tps = toks / secs
        print(f"vllm_rollout_seconds={secs:.2f} vllm_tokens={toks} vllm_tok_per_s={vllm_tps:.1f}", flush=True)

        ckpt = perturbed_copy(model, root / "step-000001" / "policy", args.dtype)
        inplace = policy.reload(str(ckpt), 1)
        _, toks_after = rollout(policy, questions[:1], index.search, cfg, args.temperature)
        print(f"inplace_update_seconds={inplace:.2f} (then {toks_after} tokens generated on version 1)", flush=True)
        policy.close()
        del policy
        gc.collect()

        t0 = time.perf_counter()
        rebuilt = VLLMPolicy(str(ckpt), dtype=args.dtype, version=1)
        rebuild = time.perf_counter() - t0
        rebuilt.close()
        print(f"rebuild_seconds={rebuild:.1f} (a new engine on the checkpoint, until it can serve)", flush=True)

        hf_tps = None
        if not args.skip_hf:
            from s3core.search.policy_hf import HFPolicy

            hf = HFPolicy.from_pretrained(model, dtype=args.dtype, device=args.device or None,
                                          max_batch_size=args.max_batch_size)
            rollout(hf, questions[:1], index.search, cfg, args.temperature)  # warm-up
            secs, toks = rollout(hf, questions, index.search, cfg, args.temperature)
            hf_tps = toks / secs
            print(f"hf_rollout_seconds={secs:.2f} hf_tokens={toks} hf_tok_per_s={hf_tps:.1f}", flush=True)
            print(f"rollout_ratio={vllm_tps / hf_tps:.2f}", flush=True)
        print(f"ratio={rebuild / inplace:.1f}", flush=True)
    return 0


if __name__ == "__main__":  # vLLM spawns its engine processes: keep the guard
    raise SystemExit(main())
