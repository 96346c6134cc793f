"""Does the searcher learn?  The whole s3 method on the embedded default, through the real services.

One run, fixed seeds, on one CPU box:

1. **world** -- a synthetic world (``s3 data synth``, seed ``--world-seed``); its 2-hop questions are
   split once, by position, into *held-out* (``--n-heldout``), *validation* (``--n-val``) and a
   *training pool* (the rest, up to ``--n-train``).  Held-out questions are never trained or
   validated on; nothing in this script looks at them before stage 6.
2. **index** -- BM25 over the world's corpus.
3. **services** -- redis-server, the retriever and the generator (embedded SmolLM2-135M-Instruct,
   frozen, span-match GenAcc) start once on loopback; each stage below starts its own searcher.
4. **warm start** -- ``s3 sft`` on teacher trajectories built from the world's metadata (bridge
   entity, gold passage ids) for ``--sft-examples`` training-pool questions (``--sft-epochs`` 0
   skips it: RL then starts from the untrained model).
5. **RL** -- ``s3 train``: GRPO with the paper's Gain-Beyond-RAG reward against the cached naive-RAG
   baselines (training pool filtered to the questions naive RAG gets wrong), DAPO-style dynamic
   sampling (``rl.filter_groups``: groups whose trajectories all earned the same reward carry no
   advantage and are replaced by more rollouts, up to ``--filter-max-rounds`` a step), validation on
   the validation split before training and every ``--val-every`` steps, the best policy by
   validation GBR kept.
6. **held-out evaluation** -- ``s3 eval --method s3,naive-rag`` on the held-out split with the
   policy RL started from and with the best policy; GBR per question = s3 GenAcc − naive GenAcc;
   the gain's 95 % CI is a paired bootstrap over held-out questions.
7. **another world** (``--second-world-n`` > 0) -- the best policy against naive RAG on 2-hop
   questions of a world with another seed (``--second-world-seed``), through ``s3 eval``.

Writes ``DIR/summary.json`` (``gbr_start``, ``gbr_end``, ``gbr_gain``, ``gain_ci95``,
``s3_genacc_end``, ``naive_rag_genacc``, ``n_heldout``, ``steps``, ``wall_s``, per-stage seconds,
the configuration), the best policy as a Hugging Face folder ``DIR/policy/``, the curve
``DIR/learning_curve.png``, and prints ``gain=<gbr_gain>`` as its last line.

    .venv/bin/python bench/learning.py --out runs/learning          # or: make learn-demo
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HOPS2 = "synth_2hop.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world (default 0)")
    p.add_argument("--n-entities", type=int, default=300, help="entities of the world (default 300)")
    p.add_argument("--n-heldout", type=int, default=100, help="held-out 2-hop questions (default 100)")
    p.add_argument("--n-val", type=int, default=32, help="validation 2-hop questions (default 32)")
    p.add_argument("--n-train", type=int, default=240, help="training-pool 2-hop questions (default 240)")
    p.add_argument("--sft-examples", type=int, default=192,
                   help="teacher trajectories for the warm start (default 192)")
    p.add_argument("--sft-epochs", type=int, default=1, help="warm-start epochs (0 = no warm start; default 1)")
    p.add_argument("--init-policy", default="",
                   help="start RL from this Hugging Face folder (e.g. DIR/sft/policy of an earlier run on the same "
                        "world and splits) instead of running the warm start")
    p.add_argument("--sft-lr", type=float, default=2e-4, help="warm-start learning rate (default 2e-4)")
    p.add_argument("--steps", type=int, default=12, help="RL steps (default 12)")
    p.add_argument("--batch-size", type=int, default=4, help="questions per RL step (default 4)")
    p.add_argument("--group-size", type=int, default=4, help="GRPO trajectories per question (default 4)")
    p.add_argument("--lr", type=float, default=5e-5, help="RL actor learning rate (default 5e-5)")
    p.add_argument("--no-filter-groups", dest="filter_groups", action="store_false",
                   help="update on every group, also those whose rewards are all equal (default: DAPO-style "
                        "dynamic sampling, rl.filter_groups)")
    p.add_argument("--filter-max-rounds", type=int, default=2,
                   help="rollouts per step at most while collecting informative groups (default 2)")
    p.add_argument("--entropy-coef", type=float, default=0.0, help="entropy bonus of the RL loss (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout temperature during RL (default 1.0)")
    p.add_argument("--train-top-layers", type=int, default=8,
                   help="decoder layers trained, from the top (SFT and RL; 0 = all; default 8)")
    p.add_argument("--val-every", type=int, default=4, help="validate every N RL steps (default 4)")
    p.add_argument("--second-world-seed", type=int, default=1, help="seed of the transfer world (default 1)")
    p.add_argument("--second-world-n", type=int, default=30,
                   help="2-hop questions of the transfer world (0 = skip stage 7; default 30)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the paired bootstrap")
    p.add_argument("--no-eval-final", action="store_true",
                   help="skip the extra held-out evaluation of the last RL policy (when it is not the best one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("n_heldout", "n_val", "n_train", "steps", "batch_size", "val_every", "filter_max_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.group_size < 2:
        p.error("--group-size must be >= 2 (GRPO advantages are group-relative)")
    return args


def _split_world(world: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Held-out / validation / training-pool files from the world's 2-hop questions (by position)."""
    rows = [json.loads(line) for line in (world / HOPS2).read_text(encoding="utf-8").splitlines() if line.strip()]
    need = args.n_heldout + args.n_val + args.n_train
    if len(rows) < need:
        raise SystemExit(f"the world has {len(rows)} 2-hop questions; the splits need {need}")
    cuts = {"heldout": rows[: args.n_heldout],
            "val": rows[args.n_heldout: args.n_heldout + args.n_val],
            "train": rows[args.n_heldout + args.n_val: need]}
    out = {}
    for name, part in cuts.items():
        path = world / f"synth2_{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
        out[name] = path
    return out


def _config_yaml(args: argparse.Namespace, out: Path, splits: dict[str, Path]) -> dict[str, Any]:
    return {
        "presets": ["embedded"],
        # one search, then the final (selecting) turn: enough for 2-hop questions, and half the tokens
        "search": {"initial_k": 3, "retrieve_k": 3, "select_max": 3, "max_turns": 1, "max_new_tokens": 64,
                   "temperature_train": args.temperature, "temperature_eval": 0.0},
        "generator": {"judge": "none"},
        "rl": {"algorithm": "grpo", "group_size": args.group_size, "actor_lr": args.lr, "kl_coef": 0.0,
               "entropy_coef": args.entropy_coef, "train_top_layers": args.train_top_layers, "micro_batch_size": 4,
               "max_grad_norm": 1.0, "filter_groups": args.filter_groups, "filter_max_rounds": args.filter_max_rounds,
               "seed": 0},
        "train": {"questions": [str(splits["train"])], "steps": args.steps, "batch_size": args.batch_size,
                  "checkpoint_dir": str(out / "train"), "save_every": 1, "keep_last": 2, "seed": 0,
                  "val_questions": [str(splits["val"])], "val_every": args.val_every,
                  "val_before_train": True, "val_after_train": True},
        "sft": {"epochs": max(1, args.sft_epochs), "lr": args.sft_lr, "batch_size": 4, "micro_batch_size": 4,
                "out": str(out / "sft"), "seed": 0},
        "eval": {"batch_size": 8},
        "state_dir": str(out / "state"),
    }


def _per_question(eval_dir: Path, method: str) -> dict[str, float]:
    path = eval_dir / method / "predictions.jsonl"
    if not path.is_file():
        path = eval_dir / "predictions.jsonl"
    out: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("method", method) != method:
            continue
        out[f"{r['dataset']}/{r['id']}"] = 1.0 if r["genacc"] else 0.0
    if not out:
        raise SystemExit(f"{path}: no predictions of method {method!r}")
    return out


def _heldout_eval(cfg: Any, cfg_path: Path, questions: list[str], addrs: Any, policy: str, out: Path,
                  quiet: bool) -> dict[str, dict[str, float]]:
    from s3core.eval.job import EvalJob, run_eval_job

    job = EvalJob(questions=questions, methods=["s3", "naive-rag"], out=str(out), k=cfg.search.initial_k,
                  retriever=addrs["retriever"], generator=addrs["generator"], config=cfg,
                  config_path=str(cfg_path), show_progress=not quiet, searcher_model=policy, seed=0)
    run_eval_job(job)
    return {m: _per_question(out, m) for m in ("s3", "naive-rag")}


def _plot(metrics: Path, png: Path, gbr_start: float, gbr_end: float, best_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
    train = [r for r in rows if r.get("kind", "train") == "train"]
    val = [r for r in rows if r.get("kind") == "validation"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if train:
        ax.plot([r["step"] for r in train], [r["gbr_mean"] for r in train], "o-", alpha=0.5,
                label="training batch GBR (sampled, T=train)")
    if val:
        xs = [r["step"] for r in val]
        ax.plot(xs, [r["val_gbr"] for r in val], "s-", color="C1", label="validation GBR (greedy)")
        ax.fill_between(xs, [r["val_gbr_ci95_lo"] for r in val], [r["val_gbr_ci95_hi"] for r in val],
                        color="C1", alpha=0.15, label="validation 95% CI")
    ax.axhline(gbr_start, color="C2", ls="--", lw=1, label=f"held-out GBR, RL start: {gbr_start:+.3f}")
    ax.axhline(gbr_end, color="C3", ls="--", lw=1, label=f"held-out GBR, best (step {best_step}): {gbr_end:+.3f}")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("RL step")
    ax.set_ylabel("Gain Beyond RAG")
    ax.set_title("s3, embedded default: SmolLM2-135M searcher, frozen SmolLM2-135M generator", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    import yaml

    from s3core.config import load_config
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.runtime.local import LocalStack
    from s3core.train.run import TrainJob, run_training
    from s3core.train.sft import run_sft, synth_teacher
    from s3core.train.validate import paired_bootstrap_ci

    t_all = time.perf_counter()
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def stage(name: str) -> Any:
        print(f"[{time.perf_counter() - t_all:7.1f}s] {name}", flush=True)
        return time.perf_counter()

    t = stage("world + index")
    world = out / "world"
    synthesize(world, seed=args.world_seed, n_entities=args.n_entities,
               n_questions=args.n_heldout + args.n_val + args.n_train)
    splits = _split_world(world, args)
    index = out / "index-bm25"
    build_index(world / "corpus.jsonl", "bm25", index)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(_config_yaml(args, out, splits), sort_keys=False), encoding="utf-8")
    cfg = load_config(cfg_path)
    seconds["world_index"] = time.perf_counter() - t

    stack = LocalStack(out / "state" / "stack", detach=False)
    try:
        t = stage("services: redis, retriever, generator")
        redis = stack.start_redis(0)
        addrs = {"retriever": stack.start_retriever(str(index), str(cfg_path)).address,
                 "generator": stack.start_generator(cfg.generator, str(cfg_path)).address}
        redis_url = f"redis://127.0.0.1:{redis.grpc_port}/0"
        seconds["services"] = time.perf_counter() - t

        start_model = cfg.searcher.model
        sft_summary: dict[str, Any] = {}
        if args.init_policy:
            if not (Path(args.init_policy) / "config.json").is_file():
                raise SystemExit(f"--init-policy {args.init_policy}: not a Hugging Face model folder")
            start_model = str(Path(args.init_policy).resolve())
            sft_summary = {"init_policy": start_model}
        elif args.sft_epochs > 0:
            t = stage(f"warm start: s3 sft on {args.sft_examples} teacher trajectories x {args.sft_epochs} epochs")
            res = run_sft(cfg, model=start_model,
                          teacher=synth_teacher([str(splits["train"])], str(index), limit=args.sft_examples),
                          show_progress=not args.quiet)
            sft_summary = res.summary()
            start_model = res.policy
            seconds["sft"] = time.perf_counter() - t

        t = stage(f"RL: GRPO, {args.steps} steps x {args.batch_size} questions x {args.group_size}")
        cfg.train.retriever, cfg.train.generator = addrs["retriever"], addrs["generator"]
        summary = run_training(TrainJob(config=cfg, config_path=str(cfg_path), index=str(index), resume=False,
                                        model=start_model, show_progress=not args.quiet, redis_url=redis_url))
        seconds["rl"] = time.perf_counter() - t
        best = summary.best or {}
        best_policy = best.get("policy_path") or summary.policy_path
        best_step = int(best.get("step", summary.steps))

        t = stage("held-out evaluation: the policy RL started from")
        held = [str(splits["heldout"])]
        start = _heldout_eval(cfg, cfg_path, held, addrs, start_model, out / "eval-start", args.quiet)
        seconds["eval_start"] = time.perf_counter() - t
        if best_step == 0:  # the best policy is the one RL started from: greedy decoding repeats its evaluation
            end = start
        else:
            t = stage(f"held-out evaluation: the best policy by validation (step {best_step})")
            end = _heldout_eval(cfg, cfg_path, held, addrs, best_policy, out / "eval-best", args.quiet)
            seconds["eval_best"] = time.perf_counter() - t
        final: dict[str, Any] = {}
        if not args.no_eval_final and best_step != summary.steps and Path(summary.policy_path).is_dir():
            # information only: the claim is the best-by-validation policy's; this shows what RL's last step did
            t = stage(f"held-out evaluation: the last RL policy (step {summary.steps})")
            last = _heldout_eval(cfg, cfg_path, held, addrs, summary.policy_path, out / "eval-last", args.quiet)
            final = {"step": summary.steps, "s3_genacc": sum(last["s3"].values()) / len(last["s3"])}
            seconds["eval_last"] = time.perf_counter() - t

        keys = sorted(start["naive-rag"])
        if sorted(end["naive-rag"]) != keys or sorted(start["s3"]) != keys or sorted(end["s3"]) != keys:
            raise SystemExit("the two held-out evaluations scored different questions")
        naive = [start["naive-rag"][k] for k in keys]
        naive_end = [end["naive-rag"][k] for k in keys]
        if naive != naive_end:  # the frozen generator with greedy decoding must not change its mind
            print("warning: naive-RAG answers differ between the two evaluations", file=sys.stderr)
        s3_start = [start["s3"][k] for k in keys]
        s3_end = [end["s3"][k] for k in keys]
        n = len(keys)
        gbr_start = (sum(s3_start) - sum(naive)) / n
        gbr_end = (sum(s3_end) - sum(naive)) / n
        lo, hi = paired_bootstrap_ci(s3_end, s3_start, seed=args.bootstrap_seed)

        second: dict[str, Any] = {}
        if args.second_world_n > 0:
            t = stage(f"another world (seed {args.second_world_seed}): best policy vs naive RAG, 2-hop")
            w2 = out / "world2"
            synthesize(w2, seed=args.second_world_seed, n_entities=args.n_entities, n_questions=args.second_world_n)
            idx2 = out / "index2-bm25"
            build_index(w2 / "corpus.jsonl", "bm25", idx2)
            from s3core.eval.job import EvalJob, run_eval_job

            run_eval_job(EvalJob(questions=[str(w2 / HOPS2)], methods=["s3", "naive-rag"], out=str(out / "eval-world2"),
                                 index=str(idx2), k=cfg.search.initial_k, generator=addrs["generator"], config=cfg,
                                 config_path=str(cfg_path), show_progress=not args.quiet, searcher_model=best_policy))
            s3w = _per_question(out / "eval-world2", "s3")
            nw = _per_question(out / "eval-world2", "naive-rag")
            kk = sorted(nw)
            a, b = [s3w[k] for k in kk], [nw[k] for k in kk]
            second = {"seed": args.second_world_seed, "n": len(kk), "s3_genacc": sum(a) / len(kk),
                      "naive_rag_genacc": sum(b) / len(kk), "gbr": (sum(a) - sum(b)) / len(kk),
                      "gbr_ci95": list(paired_bootstrap_ci(a, b, seed=args.bootstrap_seed))}
            seconds["second_world"] = time.perf_counter() - t
    finally:
        stack.down()

    if Path(best_policy).is_dir():
        shutil.copytree(best_policy, out / "policy")
    ckdir = Path(cfg.train.checkpoint_dir)
    _plot(ckdir / "metrics.jsonl", out / "learning_curve.png", gbr_start, gbr_end, best_step)
    wall = time.perf_counter() - t_all
    train_rows = [r for r in summary.history]
    phase = {k: sum(float(r.get(k, 0.0)) for r in train_rows) / max(1, len(train_rows))
             for k in ("rollout_seconds", "reward_seconds", "update_seconds", "publish_seconds", "step_seconds")}
    result = {
        "gbr_start": gbr_start, "gbr_end": gbr_end, "gbr_gain": gbr_end - gbr_start, "gain_ci95": [lo, hi],
        "s3_genacc_start": sum(s3_start) / n, "s3_genacc_end": sum(s3_end) / n, "naive_rag_genacc": sum(naive) / n,
        "n_heldout": n, "steps": summary.steps, "best_step": best_step, "wall_s": wall, "stage_seconds": seconds,
        "rl_step_seconds_mean": phase, "train_questions": summary.train_questions,
        "validations": [{k: v.get(k) for k in ("step", "val_gbr", "val_gbr_ci95", "val_s3_genacc", "val_naive_genacc")}
                        for v in (summary.validations or [])],
        "sft": sft_summary, "second_world": second, "last_policy_heldout": final, "start_policy": start_model, "best_policy": str(out / "policy"),
        "args": vars(args),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("gbr_start", "gbr_end", "gain_ci95", "s3_genacc_end",
                                            "naive_rag_genacc", "n_heldout", "steps", "wall_s")}, indent=1))
    if second:
        print(f"second world (seed {second['seed']}, {second['n']} 2-hop): s3 {second['s3_genacc']:.3f} vs naive RAG "
              f"{second['naive_rag_genacc']:.3f} (GBR {second['gbr']:+.3f}, 95% CI {second['gbr_ci95']})")
    print(f"gain={gbr_end - gbr_start:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
