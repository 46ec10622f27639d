#!/usr/bin/env bash
# scripts/reproduce_results.sh        (from the repo root, after `make setup`; about an hour on 2 CPU cores)
#
# Every measured table in SELECTIVITY.md, in the order they were produced: the quick protocol (32 C4
# calibration windows of 512 tokens, WikiText-2 test perplexity on the first 16 windows of 512) on the
# embedded SmolLM2-135M. Resumable: finished runs are skipped (see scripts/run_selectivity_experiments.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
export WANDA_DATA_DIR="${WANDA_DATA_DIR:-$(cd ../shared/data 2>/dev/null && pwd)}"
export EXTRA_ARGS="${EXTRA_ARGS:---eval_batch_size 4}"   # same perplexity, fewer forward calls
M=smollm2-135m
status=0
# 1. wanda vs the three selectivity scores, 50% unstructured and 2:4, calibration seeds 0 1 2.
for type in unstructured 2:4; do
    scripts/run_selectivity_experiments.sh $M 0.5 $type --seeds 0 1 2 || status=1
done
# 2. the other baselines and NeuronRank on the same calibration, seed 0.
for type in unstructured 2:4; do
    METHODS="wanda magnitude sparsegpt neuronrank neuronrank_fisher" \
        scripts/run_selectivity_experiments.sh $M 0.5 $type --seeds 0 || status=1
done
# 3. 4:8, seed 0.
scripts/run_selectivity_experiments.sh $M 0.5 4:8 --seeds 0 || status=1
# 4. sparsity curve, wanda vs wanda_select, seed 0.
RATIOS="0.3 0.5 0.7" scripts/sweep_sparsity.sh $M --seeds 0 || status=1
# 5. hyperparameter sweep selected on WikiText-2 validation, reported on test (seed 0).
.venv/bin/python scripts/sweep_selectivity.py --model $M --method wanda_select --val_seeds 0 --test_seeds 0 \
    --tau_percentile 0.6 0.8 --top_quantile 0.9 --idf_exp 1 0 --spiky_exp 1 0.5 || status=1
exit $status
