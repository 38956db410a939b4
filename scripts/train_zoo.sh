#!/usr/bin/env bash
# Train and publish every compact model on CPU, one after another: each family's compact model with its CPU recipe,
# as the families declare them (lipzoo.train.recipes.compact_runs); the README's reproduce commands in a resumable loop. Re-run it after an interruption: a finished run (results.json) is not
# retrained, a published model (hub/lipzoo/<arch>.cifar10) is not republished, any other run resumes.
# Each published run's record (log.jsonl, recipe.json, results.json) is copied to results/runs/<arch>.cifar10/
# with its training curve (scripts/plot_training.py).
#   RUNS=/path/to/runs scripts/train_zoo.sh          (default RUNS=runs)
# On a CPU shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps threads from spinning against each other; on an
# otherwise idle CPU leave it unset (lot_xs training on the idle CPU here: 105-121 images/s with PASSIVE, 400-457 without).
# soc_cpu trains in float32 NCHW (the recipe's fast=False): `scripts/bench.py train` measured bf16 + channels_last
# slower for it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
LIPZOO=${LIPZOO:-lipzoo}
PYTHON=${PYTHON:-$(dirname "$(command -v "$LIPZOO")")/python}
[ -x "$PYTHON" ] || PYTHON=python3
PAIRS=$("$PYTHON" -c 'from lipzoo.train.recipes import compact_runs; print(*(f"{a}:{r}" for a, r in compact_runs()))')
for pair in $PAIRS; do
    arch=${pair%%:*} recipe=${pair#*:}
    run=$RUNS/$arch.cifar10
    if [ -f "hub/lipzoo/$arch.cifar10/model.safetensors" ]; then
        echo "$arch.cifar10: already published in hub/"
        continue
    fi
    if [ ! -f "$run/results.json" ]; then
        "$LIPZOO" train --recipe "$recipe" --out "$run" --resume --no-progress
    fi
    "$LIPZOO" publish "$run" --arch "$arch" --tag cifar10
    mkdir -p "results/runs/$arch.cifar10"
    cp "$run/log.jsonl" "$run/recipe.json" "$run/results.json" "results/runs/$arch.cifar10/"
    "$PYTHON" scripts/plot_training.py "results/runs/$arch.cifar10"
done
