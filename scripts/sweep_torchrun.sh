#!/usr/bin/env bash
# A sweep on a multi-GPU node: one distributed job (scripts/torchrun.sh) per grid point, run one after another.
# (A Hydra `-m` sweep with DDP/FSDP breaks: Lightning re-launches sys.argv, sweep included, for every rank.)
#
#   scripts/sweep_torchrun.sh connector=sti,sci,dci llm=vicuna7b,llama3_8b -- stage=pretrain trainer=fsdp
#
# Arguments before `--` are sweep axes `key=v1,v2,...` (cartesian product, the first axis varies slowest);
# arguments after `--` go to every job. Each point runs in $SWEEP_DIR/<n>-<k-v_...> (default
# multirun/torchrun_<timestamp>) with WANDB_RUN_GROUP=<sweep folder name>; a failed point is reported and the
# sweep goes on; the exit status is 1 if any point failed. DRY_RUN=1 prints the commands only (on a machine
# without GPUs and without GPUS_PER_NODE, with GPUS_PER_NODE=1, said on stderr).
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

# Split a sweep axis's values at the commas outside brackets and quotes (Hydra's sweep grammar):
# `connector.layers=[7,15],[11,23]` has two values, `[7,15]` and `[11,23]`.
split_values() {
  local s=$1 depth=0 quote="" cur="" c i
  values=()
  for (( i = 0; i < ${#s}; i++ )); do
    c=${s:i:1}
    if [[ -n "$quote" ]]; then
      [[ "$c" == "$quote" ]] && quote=""
    elif [[ "$c" == "'" || "$c" == '"' ]]; then quote=$c
    elif [[ "$c" == "[" || "$c" == "{" || "$c" == "(" ]]; then depth=$((depth + 1))
    elif [[ "$c" == "]" || "$c" == "}" || "$c" == ")" ]]; then depth=$((depth - 1))
    elif [[ "$c" == "," && $depth -eq 0 ]]; then values+=("$cur"); cur=""; continue
    fi
    cur+=$c
  done
  values+=("$cur")
  if [[ $depth -ne 0 || -n "$quote" ]]; then echo "unbalanced brackets or quotes in sweep axis: $s" >&2; exit 2; fi
}

# Expand the grid: each point is its overrides joined by the unit separator (a value may hold spaces).
SEP=$'\x1f'
points=("")
for axis in "${axes[@]}"; do
  key=${axis%%=*}; split_values "${axis#*=}"
  next=()
  for p in "${points[@]}"; do for v in "${values[@]}"; do next+=("${p:+$p$SEP}$key=$v"); done; done
  points=("${next[@]}")
done

# once for every point: no GPUs stops the sweep here, and a dry run prints the commands wherever it runs
source scripts/gpus_per_node.sh
gpus_per_node "commands show" || exit 1

SWEEP_DIR=${SWEEP_DIR:-multirun/torchrun_$(date +%Y-%m-%d_%H-%M-%S)}
export WANDB_RUN_GROUP=${WANDB_RUN_GROUP:-$(basename "$SWEEP_DIR")}
failed=0; n=0
for p in "${points[@]}"; do
  IFS=$SEP read -r -a overrides <<< "$p"
  tag=$(IFS=_; echo "${overrides[*]}" | tr "=/,[]{}()'\" " '-___________' | tr -s _)  # no '=', ',' or brackets in a folder name
  shown=$(IFS=' '; echo "${overrides[*]}")
  run_dir="$SWEEP_DIR/$n-$tag"
  echo "[$n/${#points[@]}] $shown" >&2
  if ! RUN_DIR="$run_dir" scripts/torchrun.sh "${overrides[@]}" "${common[@]}"; then
    echo "sweep point $n failed: $shown" >&2; failed=1
  fi
  n=$((n + 1))
done
exit $failed
