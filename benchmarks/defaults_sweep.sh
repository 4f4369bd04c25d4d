#!/usr/bin/env bash
# One change at a time against the defaults, hard masks N=400, on three GLUE tasks (H100, ~6 min).
#   bash benchmarks/defaults_sweep.sh OUTDIR
set -u
out="${1:-.devsweep}"
run() { name=$1; shift; python3 benchmarks/glue_grid.py run --from .devdata/presets --model .devmodel/minilm-fp16 \
  --device cuda --tasks mrpc stsb rte --methods x-peft --n 400 --mask hard -o "$out/$name" "$@" | tail -6; }
run defaults      --epochs 3
run epochs10      --epochs 10
run tau0.5        --epochs 3 --tau 0.5
run tau2          --epochs 3 --tau 2.0
run init0.5       --epochs 3 --init-scale 0.5
run init2         --epochs 3 --init-scale 2.0
run k20           --epochs 3 --k 20
