#!/usr/bin/env bash
# scripts/sweep_sparsity.sh [MODEL] [--seeds 0 1 2]      (MODEL defaults to smollm2-135m)
#
# Unstructured sparsity sweep, wanda vs wanda_select, at RATIOS (default 0.3 0.4 0.5 0.6 0.7): one
# scripts/run_selectivity_experiments.sh batch per ratio (same layout, same resume, same environment
# overrides: NSAMPLES, SEQLEN, EVAL_LIMIT, PYTHON, RESULTS_DIR), then one report over all ratios in
# $RESULTS_DIR/<model>/sparsity_sweep/ with ppl_vs_sparsity.png.
#
#   RATIOS="0.3 0.5 0.7"            fewer ratios on CPU
#   METHODS="wanda wanda_select"    the methods compared (default)
# A ratio whose batch fails does not stop the sweep; the script exits 1 at the end if any did.
set -euo pipefail
trap 'exit 130' INT  # Ctrl-C stops the whole batch, not just the current run

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL=smollm2-135m
PASS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --seeds) PASS+=("$1"); shift; while [ $# -gt 0 ] && [[ "$1" =~ ^[0-9,]+$ ]]; do PASS+=("$1"); shift; done ;;
        -*) echo "unknown option '$1'; options are --seeds, --help" >&2; exit 2 ;;
        *) MODEL="$1"; shift ;;
    esac
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
export METHODS="${METHODS:-wanda wanda_select}"
read -r -a RATIO_LIST <<< "${RATIOS:-0.3 0.4 0.5 0.6 0.7}"
RESULTS_DIR="${RESULTS_DIR:-$REPO/results}"
export RESULTS_DIR
MODEL_TAG="$(basename "${MODEL%/}")"
MODEL_TAG="${MODEL_TAG%.gguf}"

status=0
CELLS=()
dense="${DENSE_EVAL:-first}"
for ratio in "${RATIO_LIST[@]}"; do
    # Dense perplexity does not depend on the ratio: measure it in the first batch only.
    DENSE_EVAL="$dense" "$REPO/scripts/run_selectivity_experiments.sh" "$MODEL" "$ratio" unstructured --no-report \
        ${PASS[@]+"${PASS[@]}"} || { rc=$?; [ "$rc" = 130 ] && exit 130; status=1; }
    dense=none
    CELLS+=("$RESULTS_DIR/$MODEL_TAG/$(LC_ALL=C printf '%g' "$ratio")_unstructured")
done
EXISTING=()
for cell in "${CELLS[@]}"; do [ -d "$cell" ] && EXISTING+=("$cell"); done
if [ ${#EXISTING[@]} -gt 0 ]; then
    # Only the methods of this sweep: a ratio folder may also hold runs of other methods from other batches.
    FILES=()
    for cell in "${EXISTING[@]}"; do
        for method in $METHODS; do
            for f in "$cell/$method"/seed*/results.json; do [ -f "$f" ] && FILES+=("$f"); done
        done
    done
    if [ ${#FILES[@]} -gt 0 ]; then
        "$PYTHON" "$REPO/scripts/report.py" "${FILES[@]}" --out "$RESULTS_DIR/$MODEL_TAG/sparsity_sweep"
    fi
fi
exit $status
