#!/usr/bin/env bash
# GPU checks of the speed and memory work, on one GPU, in about 8 minutes (H100). Results go to $OUT (the device
# tool's output folder), else ./gpu_results: one log per step, steps.jsonl (rc and seconds per step), env.json,
# pytest-gpu.xml, gpu_part1.json and gpu_part2.json (each rewritten after every section, so a timeout keeps what
# finished).
#
#   scripts/gpu_checks.sh             # the real run (CUDA)
#   scripts/gpu_checks.sh --dry-run   # the same steps at toy sizes, on whatever device (CPU included): checks the
#                                     # script and the benchmark code paths, numbers meaningless
#   scripts/gpu_checks.sh --mfu       # only the MFU levers (~5 min on an H100, limits 430 s): calibration, the best
#                                     # earlier variant as the same-call baseline, fused AdamW, compiled encoder,
#                                     # accumulation to ~128 samples per step, SHARD_GRAD_OP, and the profile of a step
#                                     # (gpu_part1.json)
#
# Steps and time limits (expected on one H100):
#   1. env          (~10 s)  versions, device, which kernels are importable (liger-kernel, flash-attn, varlen_attn)
#   2. gpu tests    (~90 s, limit 110 s)  pytest -m gpu: Liger/chunked loss vs dense in bf16; packed (varlen) vs
#                   padded loss and gradients in bf16 and fp32; FSDP2 bf16-mixed on one GPU through train.py,
#                   killed after a sharded checkpoint, resumed, compared with the uninterrupted run
#   3. eval throughput (limit 75 s) 7B-shaped random VLM generating: tokens/s, batch size, peak memory
#   4. bench part 1 (~2.5 min, limit 200 s)  calibration GEMM, ~1B + CLIP-L + DCI training-like MFU in the six
#                   baseline variants (the lever variants and the profile are --mfu's: run it as a second call)
#   5. bench part 2 (~1 min, limit 90 s) loss variants, attention variants, P3 at 7B, 7B memory feasibility
# Afterwards (on any machine), adding them to the recorded GPU results: python -m dc.bench \
#     --from-json docs/benchmarks.json --gpu-json <OUT>/gpu_part1.json <OUT>/gpu_part2.json --out docs/benchmarks.md
set -u
cd "$(dirname "$0")/.."
DRY=0
MFU=0
[ "${1:-}" = "--dry-run" ] && DRY=1
[ "${1:-}" = "--mfu" ] && MFU=1
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
: > "$OUT/steps.jsonl"

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start rc
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "seconds": %d, "dry_run": %d}\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$DRY" \
    >> "$OUT/steps.jsonl"
  tail -n 3 "$OUT/$name.log"
  return 0  # keep going: every step writes its own results
}

step env 30 "$PY" - "$OUT/env.json" <<'EOF'
import importlib.util, json, platform, sys
import torch, transformers, lightning
info = {
    "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
    "lightning": lightning.__version__, "cuda": torch.cuda.is_available(),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "liger_kernel": importlib.util.find_spec("liger_kernel") is not None,
    "flash_attn": importlib.util.find_spec("flash_attn") is not None,
}
try:
    from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    info["torch_varlen_attn"] = True
except ImportError:
    info["torch_varlen_attn"] = False
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method  # noqa: F401 - FSDP2 API present
info["fsdp2"] = True
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
EOF

if [ "$MFU" = 1 ]; then
  step bench_mfu 400 "$PY" -m dc.bench --mode gpu --part 1 --out-dir "$OUT" --sections \
    calibration,mfu_1b/packed_none_compiled,mfu_1b/packed_none_compiled_fused,mfu_1b/packed_none_compiled_fused_enc,mfu_1b/packed_none_compiled_fused_enc_acc128,mfu_1b/packed_none_compiled_fused_enc_acc128_sgo,mfu_1b/packed_selective_compiled_fused_enc_acc128,profile_1b
elif [ "$DRY" = 1 ]; then
  # Toy sizes: the GPU tests skip themselves without CUDA; the benchmark runs its tiny shapes.
  step gpu_tests 150 "$PY" -m pytest -q -p no:xdist -m gpu --junitxml="$OUT/pytest-gpu.xml" \
    tests/models/test_llm_speed.py tests/models/test_loss.py tests/training/test_training_fsdp2.py
  step bench_part1 270 "$PY" -m dc.bench --mode gpu --part 1 --tiny --out-dir "$OUT" \
    --sections calibration,mfu_1b/packed_selective,mfu_1b/padded_selective
  step bench_part2 240 "$PY" -m dc.bench --mode gpu --part 2 --tiny --out-dir "$OUT"
  step eval_throughput 60 "$PY" experiments/eval_throughput/measure.py --tiny --batches 1,2 --new-tokens 4 \
    --out "$OUT/eval_throughput.json"
else
  # Limits sum to 505 s with env's 30 s, so the whole script fits one 600 s device call (wheels install first, ~15 s).
  step gpu_tests 110 "$PY" -m pytest -q -p no:xdist -m gpu -rA --junitxml="$OUT/pytest-gpu.xml" \
    tests/models/test_llm_speed.py tests/models/test_loss.py tests/training/test_training_fsdp2.py
  step eval_throughput 75 "$PY" experiments/eval_throughput/measure.py --batches 1,16,64 --new-tokens 64 \
    --out "$OUT/eval_throughput.json"
  step bench_part1 200 "$PY" -m dc.bench --mode gpu --part 1 --out-dir "$OUT" --sections \
    calibration,mfu_1b/packed_selective,mfu_1b/packed_none,mfu_1b/packed_full,mfu_1b/padded_selective,mfu_1b/packed_selective_compiled,mfu_1b/packed_none_compiled
  step bench_part2 90 "$PY" -m dc.bench --mode gpu --part 2 --out-dir "$OUT"
fi
echo "results in $OUT:"
ls -l "$OUT"
cat "$OUT/steps.jsonl"
