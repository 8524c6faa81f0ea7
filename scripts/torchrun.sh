#!/usr/bin/env bash
# One distributed training job with torchrun (torchrun creates the ranks; Lightning detects torchelastic and does
# not spawn, so Hydra's sys.argv re-launch never happens). Hydra overrides are passed through.
#
#   scripts/torchrun.sh stage=finetune llm=vicuna7b trainer=fsdp stage.init_connector_from=...   # 1 node
#   NNODES=4 NODE_RANK=$i MASTER_ADDR=node0 RUN_DIR=/shared/runs/x scripts/torchrun.sh ...       # on every node
#
# Environment: GPUS_PER_NODE (default: all visible GPUs), NNODES (1), NODE_RANK (0), MASTER_ADDR (localhost),
# MASTER_PORT (29500), RUN_DIR (the Hydra run folder; must be the same path, on a shared filesystem, on every
# node; default outputs/torchrun/<timestamp> — all ranks of a node get the same one), PYTHON (python),
# DRY_RUN=1 (print the command instead of running it), ENTRY (what each rank runs: default train.py; a whole
# paper-table point: ENTRY="-m dc.experiments.recipe").
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/gpus_per_node.sh
gpus_per_node "command shows" || exit 1
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -z "${RUN_DIR:-}" ]]; then
  if [[ "$NNODES" -gt 1 ]]; then echo "set RUN_DIR (a shared folder) for a multi-node run" >&2; exit 1; fi
  RUN_DIR=outputs/torchrun/$(date +%Y-%m-%d_%H-%M-%S)
fi

read -r -a entry <<< "${ENTRY:-train.py}"
cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
     "${entry[@]}" "trainer.devices=$GPUS_PER_NODE" "trainer.num_nodes=$NNODES" "hydra.run.dir=$RUN_DIR"
     'hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/train_rank${oc.env:RANK,0}.log'
     "$@")
if [[ -n "${PYTHON:-}" ]]; then cmd=("$PYTHON" -m torch.distributed.run "${cmd[@]:1}"); fi
if [[ "${DRY_RUN:-0}" == "1" ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
