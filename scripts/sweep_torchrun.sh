#!/usr/bin/env bash
# A sweep on a multi-GPU node: one distributed job (scripts/torchrun.sh) per grid point, run one after another.
# (A Hydra `-m` sweep with DDP/FSDP breaks: Lightning re-launches sys.argv, sweep included, for every rank.)
#
#   scripts/sweep_torchrun.sh connector=sti,sci,dci llm=vicuna7b,llama3_8b -- stage=pretrain trainer=fsdp
#
# Arguments before `--` are sweep axes `key=v1,v2,...` (cartesian product, the first axis varies slowest);
# arguments after `--` go to every job. Each point runs in $SWEEP_DIR/<n>-<k-v_...> (default
# multirun/torchrun_<timestamp>) with WANDB_RUN_GROUP=<sweep folder name>; a failed point is reported and the
# sweep goes on; the exit status is 1 if any point failed. DRY_RUN=1 prints the commands only.
# ENTRY selects what each point runs (scripts/torchrun.sh): train.py by default, or the whole recipe of a paper
# table (stage 1 -> stage 2 -> benchmarks), then one command for its table:
#
#   ENTRY="-m dc.experiments.recipe" SWEEP_DIR=multirun/t1 scripts/sweep_torchrun.sh connector=mlp,sti,sci,dci \
#       seed=1,2,3 -- experiment=table1_layers trainer=fsdp
#   python -m dc.experiments.collect multirun/t1
set -uo pipefail
cd "$(dirname "$0")/.."

axes=(); common=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then shift; common=("$@"); break; fi
  [[ "$1" == *=*,* || "$1" == *=* ]] || { echo "sweep axis must look like key=v1,v2: $1" >&2; exit 2; }
  axes+=("$1"); shift
done
[[ ${#axes[@]} -gt 0 ]] || { echo "usage: $0 key=v1,v2 [key=...] [-- overrides]" >&2; exit 2; }

# Expand the grid into lines of space-separated overrides.
points=("")
for axis in "${axes[@]}"; do
  key=${axis%%=*}; IFS=',' read -r -a values <<< "${axis#*=}"
  next=()
  for p in "${points[@]}"; do for v in "${values[@]}"; do next+=("${p:+$p }$key=$v"); done; done
  points=("${next[@]}")
done

SWEEP_DIR=${SWEEP_DIR:-multirun/torchrun_$(date +%Y-%m-%d_%H-%M-%S)}
export WANDB_RUN_GROUP=${WANDB_RUN_GROUP:-$(basename "$SWEEP_DIR")}
failed=0; n=0
for p in "${points[@]}"; do
  read -r -a overrides <<< "$p"
  tag=$(IFS=_; echo "${overrides[*]}" | tr '=/,' '-__')  # Hydra's override grammar: no '=' or ',' in a value
  run_dir="$SWEEP_DIR/$n-$tag"
  echo "[$n/${#points[@]}] $p" >&2
  if ! RUN_DIR="$run_dir" scripts/torchrun.sh "${overrides[@]}" "${common[@]}"; then
    echo "sweep point $n failed: $p" >&2; failed=1
  fi
  n=$((n + 1))
done
exit $failed
