#!/usr/bin/env bash
# The CPU-scale Table 1 end to end: the proxy-encoder pretraining (done by the first point, reused by the others),
# 12 sweep points (4 connectors x 3 seeds, two at a time), then the table and plot.
#   experiments/table1_layers/run.sh            # SWEEP=multirun/table1_layers/cpu, N_JOBS=2 points at a time
#   OUT=experiments/table1_layers experiments/table1_layers/run.sh   # publish: replace the committed table here
# The table (table.md/.json/.png) goes to OUT, by default the sweep folder, so a trial run (other settings as
# extra arguments: `run.sh prepare.encoder.steps=10 ...`) never replaces the published one.
# Re-running with the same SWEEP resumes: finished stages and benchmarks are read back, an unfinished stage
# restarts from its last checkpoint; with other settings it is refused (use another SWEEP, or `overwrite=true`).
# Needs the `experiments` extra (matplotlib, hydra-joblib-launcher). The proxy tower is built once per settings
# (data/encoders/tiny_clip_shapes_v1-<digest>); delete that folder to time the encoder pretraining again.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
SWEEP=${SWEEP:-multirun/table1_layers/cpu}
OUT=${OUT:-$SWEEP}
N_JOBS=${N_JOBS:-2}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-disabled}
start=$(date +%s); status=0
"$PYTHON" -m dc.experiments.recipe -m experiment=table1_layers hydra/launcher=joblib hydra.launcher.n_jobs="$N_JOBS" \
  hydra.sweep.dir="$SWEEP" "$@" || status=$?   # a failed point: the others still count, collect names it
"$PYTHON" -m dc.experiments.collect "$SWEEP" --metrics 'synthetic/accuracy*' --out "$OUT"
echo "wall: $(( $(date +%s) - start )) s"
exit $status
