#!/usr/bin/env bash
# `s3 train` end to end on one GPU: redis, retriever, generator and searcher on loopback, the learner in process
# (PPO with critic and reference, bf16 autocast), a randomly initialised Qwen2-shaped model (the device machine
# reaches no model hub) as searcher and generator, the synthetic world as data: 3 steps of 16 questions.
# bench/gpu_smoke.sh does the work (it also runs `s3 eval` episodes and real small models; see its header); this is
# its training-only, tiny-model setting, kept under the name earlier GPU runs used.
#
#   bash bench/gpu_train_smoke.sh            # on the device machine (wheels carried in .whl/)
#   S3_SMOKE_DEVICE=cpu S3_SMOKE_HIDDEN=64 S3_SMOKE_LAYERS=2 bash bench/gpu_train_smoke.sh   # a dry run here
set -euo pipefail
export S3_SMOKE_TINY=1 S3_SMOKE_BACKEND=hf
export S3_SMOKE_EVAL=${S3_SMOKE_EVAL:-0} S3_SMOKE_STEPS=${S3_SMOKE_STEPS:-3} S3_SMOKE_BATCH=${S3_SMOKE_BATCH:-16}
exec bash "$(dirname "${BASH_SOURCE[0]}")/gpu_smoke.sh" "$@"
