# Sourced by scripts/torchrun.sh and scripts/sweep_torchrun.sh (not run on its own).
#
# gpus_per_node WHAT: export GPUS_PER_NODE, by default the GPUs nvidia-smi lists (one "GPU <n>: ..." line each;
# without a driver nvidia-smi prints a failure message instead, which counts as none). None visible: with
# DRY_RUN=1 the printed WHAT ("command shows" / "commands show") uses 1 GPU, said on stderr; else it fails.
gpus_per_node() {
  if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
    if [[ "$GPUS_PER_NODE" -lt 1 && "${DRY_RUN:-0}" == "1" ]]; then
      echo "DRY_RUN: no GPUs visible; the $1 GPUS_PER_NODE=1 (set GPUS_PER_NODE for the real node)" >&2
      GPUS_PER_NODE=1
    fi
    [[ "$GPUS_PER_NODE" -ge 1 ]] || { echo "no GPUs visible; set GPUS_PER_NODE" >&2; return 1; }
  fi
  export GPUS_PER_NODE
}
