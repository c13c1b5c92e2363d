#!/bin/bash
# What a compressing stage 1 buys downstream (docs/results/pretext.md 3.7): the default's supervised stage (committed recipe,
# decontaminated pairs) on top of the shipped compressor (scripts/compression_levers.py, lever lr1e-3-bridge-affine,
# 300 steps) against the same stage alone, at two seeds, each evaluated on the six tasks, then compared with
# paired bootstrap intervals; beside them the compressor alone and its untrained starting point. Every step
# resumes: a killed chain restarts where it stopped.
#
#     bash scripts/compression_downstream.sh [RUNS_DIR] [SEEDS]      # defaults: runs/downstream "42 7"
set -euo pipefail
RUNS=${1:-runs/downstream}
SEEDS=${2:-42 7}
RECIPE=src/llm2comp/resources/recipes/smollm2-135m-default.yaml
COMPRESSOR=${COMPRESSOR:-runs/levers-long/lr1e-3-bridge-affine}
TASKS=STSBenchmark,STS13,STS14,STS15,SICK-R,Banking77Classification
LLM2COMP=${LLM2COMP:-llm2comp}
mkdir -p "$RUNS"

evaluate() {  # MODEL NAME
    [ -f "$RUNS/eval/$2/results.json" ] || $LLM2COMP evaluate --model "$1" --tasks $TASKS --output "$RUNS/eval/$2" --predictions
}

PYTHON=${PYTHON:-python}
# the compressor's starting point: the backbone, causal, memory from the recipe's phrase, untrained
[ -f "$RUNS/untrained-phrase/llm2comp_config.json" ] || $PYTHON -c "import sys; from llm2comp import LLM2Comp
LLM2Comp.from_pretrained('smollm2-135m', bidirectional=False, memory_init=' means in one word:\"').save(sys.argv[1])" "$RUNS/untrained-phrase"
evaluate "$RUNS/untrained-phrase" untrained-phrase
evaluate "$COMPRESSOR" stage1-only
for seed in $SEEDS; do
    for arm in supervised compress+supervised; do
        out="$RUNS/$arm-s$seed"
        model=smollm2-135m; [ "$arm" = supervised ] || model="$COMPRESSOR"
        if [ ! -f "$out/llm2comp_config.json" ]; then
            $LLM2COMP train --config $RECIPE --model "$model" --seed "$seed" --output "$out" --resume
        fi
        evaluate "$out" "$arm-s$seed"
    done
    $LLM2COMP compare "$RUNS/eval/supervised-s$seed" "$RUNS/eval/compress+supervised-s$seed" > "$RUNS/compare-s$seed.txt" || true
done
