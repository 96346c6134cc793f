#!/usr/bin/env bash
# rl.strategy fsdp on GPUs: FSDP2 RL steps (PPO: policy, critic and reference sharded; bf16 compute with fp32
# master weights; activation checkpointing) over NCCL on every visible GPU, a sharded checkpoint resumed
# (the next step must match exactly), the policy exported by rank 0 only, then CPU offload, then one process on
# one GPU as the memory baseline. Model: a randomly initialised Qwen2-shaped one built on the spot (the device
# machine reaches no model hub), or S3_FSDP_MODEL (a local Hugging Face folder).
#
#   bash scripts/gpu_smoke_fsdp.sh                                  # on a machine with >= 2 CUDA GPUs
#   S3_SMOKE_DEVICE=cpu bash scripts/gpu_smoke_fsdp.sh              # a dry run of the script here (2 gloo ranks)
#
# Variables: PY (python with torch and the platform; default .venv/bin/python), OUT (/tmp/s3-fsdp-smoke),
# S3_FSDP_RANKS (default: every GPU), S3_FSDP_MODEL, S3_FSDP_HIDDEN (1024), S3_FSDP_LAYERS (8), S3_FSDP_STEPS (2),
# S3_FSDP_BATCH (16), S3_FSDP_MAX_LEN (256), S3_FSDP_OFFLOAD=0 (skip the CPU-offload run).
# Exit: 0 passed; 77 skipped (no CUDA GPU, or only one: NCCL puts one rank per GPU and FSDP needs >= 2 ranks);
# 2 set-up error; anything else: a run failed or a check did not hold. Writes $OUT/summary.json.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/s3-fsdp-smoke}
DEVICE=${S3_SMOKE_DEVICE:-cuda}
export PYTHONPATH="$PWD/libs/s3core/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu-smoke-fsdp: $PY has no torch (set PY)" >&2; exit 2
fi
if [ "$DEVICE" = cpu ]; then
    ranks=${S3_FSDP_RANKS:-2}
    hidden=${S3_FSDP_HIDDEN:-64} layers=${S3_FSDP_LAYERS:-2} max_len=${S3_FSDP_MAX_LEN:-32} batch=${S3_FSDP_BATCH:-8}
    dtype=float32 offload=0
else
    gpus=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
    if [ "${gpus:-0}" -eq 0 ]; then echo "gpu-smoke-fsdp: skipped: no CUDA GPU"; exit 77; fi
    if [ "$gpus" -lt 2 ]; then
        echo "gpu-smoke-fsdp: skipped: one CUDA GPU (FSDP needs >= 2 ranks and NCCL one GPU per rank)"; exit 77
    fi
    ranks=${S3_FSDP_RANKS:-$gpus}
    hidden=${S3_FSDP_HIDDEN:-1024} layers=${S3_FSDP_LAYERS:-8} max_len=${S3_FSDP_MAX_LEN:-256} batch=${S3_FSDP_BATCH:-16}
    dtype=bfloat16 offload=${S3_FSDP_OFFLOAD:-1}
fi
steps=${S3_FSDP_STEPS:-2}
model=${S3_FSDP_MODEL:-tiny}
rm -rf "$OUT"; mkdir -p "$OUT"
common=(--model "$model" --tiny-hidden "$hidden" --tiny-layers "$layers" --algorithm ppo --steps "$steps"
        --batch "$batch" --max-len "$max_len" --micro-batch-tokens $((2 * max_len)) --device "$DEVICE"
        --dtype "$dtype" --gradient-checkpointing)
port=$((29500 + RANDOM % 1000))

run() {  # name nproc args...
    local name=$1 n=$2; shift 2
    echo "gpu-smoke-fsdp: $name ($n rank(s))"
    "$PY" -m torch.distributed.run --nproc-per-node "$n" --master-addr 127.0.0.1 --master-port "$port" \
        -m s3core.rl.fsdp "${common[@]}" "$@" >"$OUT/$name.jsonl" 2>"$OUT/$name.log"
    local rc=$?
    port=$((port + 1))
    if [ $rc -ne 0 ]; then echo "gpu-smoke-fsdp: $name failed (rc $rc); tail of $OUT/$name.log:" >&2
        tail -30 "$OUT/$name.log" >&2; return $rc; fi
}

rc=0
run fsdp "$ranks" --out "$OUT/fsdp" || rc=1
if [ $rc -eq 0 ] && [ "$offload" = 1 ]; then run offload "$ranks" --cpu-offload || rc=1; fi
if [ $rc -eq 0 ]; then run single 1 || rc=1; fi
[ $rc -eq 0 ] || exit 1

"$PY" - "$OUT" "$ranks" <<'EOF'
import json, sys
from pathlib import Path

out, ranks = Path(sys.argv[1]), int(sys.argv[2])
def lines(name):
    p = out / f"{name}.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.startswith("{")] if p.is_file() else []
fsdp, offload, single = lines("fsdp"), lines("offload"), lines("single")
problems = []
if len(fsdp) != ranks or any(r["strategy"] != "FSDPTrainer" for r in fsdp):
    problems.append(f"expected {ranks} FSDPTrainer ranks, got {[r.get('strategy') for r in fsdp]}")
if not all(r.get("resume_exact") for r in fsdp):
    problems.append("the step after resuming the sharded checkpoint differs")
exports = [r["export"] for r in fsdp if r.get("export")]
if len(exports) != 1 or not (Path(exports[0]) / "config.json").is_file():
    problems.append(f"expected one rank-0 export with config.json, got {exports}")
if len({json.dumps(r["policy_loss"]) for r in fsdp}) != 1:
    problems.append("the ranks report different losses")
summary = {"ranks": ranks, "fsdp": fsdp, "offload": offload, "single": single}
def peak(rs): return max((r.get("cuda_peak_bytes", 0) for r in rs), default=0)
def held(rs): return max((r["resident_bytes"]["total"] for r in rs), default=0)
if single:
    summary["resident_ratio"] = held(fsdp) / held(single)
    print(f"resident param+grad+optimiser bytes per rank / one process: {summary['resident_ratio']:.3f}")
    if peak(single):
        summary["cuda_peak_ratio"] = peak(fsdp) / peak(single)
        print(f"CUDA peak per rank: fsdp {peak(fsdp) / 2**30:.2f} GiB, one process {peak(single) / 2**30:.2f} GiB "
              f"(ratio {summary['cuda_peak_ratio']:.3f})")
    if offload and peak(offload):
        print(f"CUDA peak per rank with CPU offload: {peak(offload) / 2**30:.2f} GiB")
    if summary["resident_ratio"] > 1.5 / ranks:
        problems.append(f"a rank holds {summary['resident_ratio']:.2f} of one process's bytes")
print(f"step seconds: fsdp {fsdp[0]['step_seconds']:.2f}" + (f", one process {single[0]['step_seconds']:.2f}" if single else ""))
summary["problems"] = problems
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
for p in problems:
    print(f"gpu-smoke-fsdp: FAILED: {p}", file=sys.stderr)
print("gpu-smoke-fsdp: " + ("FAILED" if problems else "passed"))
sys.exit(1 if problems else 0)
EOF
