#!/usr/bin/env bash
# scripts/run_selectivity_experiments.sh smollm2-135m 0.5 [unstructured|2:4|4:8] [--seeds 0 1 2] [--all-methods] [--no-report]
#
# Prunes MODEL to SPARSITY with the baseline wanda and the selectivity methods, once per calibration seed,
# into  $RESULTS_DIR/<model>/<sparsity>_<type>/<method>/seed<k>/results.json  (type "2:4" is written "2-4"
# in the path), then writes the comparison report to  $RESULTS_DIR/<model>/<sparsity>_<type>/report/.
#
#   --seeds S...     calibration seeds (default 0 1 2); also "--seeds 0,1,2"
#   --all-methods    also magnitude, sparsegpt, neuronrank, neuronrank_fisher
#   --no-report      skip the report (scripts/sweep_sparsity.sh writes one over all ratios instead)
#
# Resume: a run counts as finished only if its results.json parses and records this run's settings
# (scripts/finished.py); finished runs are skipped, any other is rerun. main.py writes results.json atomically
# and only on success, so a failed or killed run is simply rerun.
# Failure policy: a failed run is reported and the batch continues with the remaining runs; the report is
# written over whatever succeeded, and the script exits 1 naming the failed runs (logs in <run dir>/run.log).
# Ctrl-C stops the batch (exit 130); rerunning the command resumes it.
#
# Environment (quick protocol defaults, as `make run`):
#   NSAMPLES=32 SEQLEN=512 EVAL_LIMIT=16   calibration samples, sequence length, eval windows (EVAL_LIMIT=none: all)
#   PYTHON=.venv/bin/python (else python3)  RESULTS_DIR=<repo>/results
#   METHODS="wanda wanda_idf wanda_spiky wanda_select"   the method list (replaces it; --all-methods adds to it)
#   DENSE_EVAL=first    dense perplexity once per batch (it depends on neither seed nor method); all | none
#   EXTRA_ARGS="..."    more main.py arguments for every run; they share the folders of runs without them,
#                      so give such a batch its own RESULTS_DIR
set -euo pipefail
# Ctrl-C: bash runs this once the current main.py has exited (it prints its own line and exits 130).
trap 'echo "interrupted: batch stopped (rerun this command to resume)" >&2; exit 130' INT

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

SEEDS=()
ALL_METHODS=0
REPORT=1
POSITIONAL=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds)
            shift
            while [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+(,[0-9]+)*$ ]]; do
                IFS=, read -r -a parts <<< "$1"
                SEEDS+=("${parts[@]}")
                shift
            done
            [ ${#SEEDS[@]} -gt 0 ] || { echo "--seeds needs one or more integers, e.g. --seeds 0 1 2" >&2; exit 2; }
            ;;
        --all-methods) ALL_METHODS=1; shift ;;
        --no-report) REPORT=0; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option '$1'; options are --seeds, --all-methods, --no-report, --help" >&2; exit 2 ;;
        *) POSITIONAL+=("$1"); shift ;;
    esac
done
if [ ${#POSITIONAL[@]} -lt 2 ] || [ ${#POSITIONAL[@]} -gt 3 ]; then
    echo "usage: $0 MODEL SPARSITY [TYPE] [--seeds S...] [--all-methods] [--no-report]  (--help for more)" >&2
    exit 2
fi
MODEL="${POSITIONAL[0]}"
SPARSITY="$(LC_ALL=C printf '%g' "${POSITIONAL[1]}")"  # 0.50 and 0.5 share one folder
TYPE="${POSITIONAL[2]:-unstructured}"
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2)

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
NSAMPLES="${NSAMPLES:-32}"
SEQLEN="${SEQLEN:-512}"
EVAL_LIMIT="${EVAL_LIMIT:-16}"
RESULTS_DIR="${RESULTS_DIR:-$REPO/results}"
DENSE_EVAL="${DENSE_EVAL:-first}"
read -r -a METHOD_LIST <<< "${METHODS:-wanda wanda_idf wanda_spiky wanda_select}"
[ "$ALL_METHODS" = 1 ] && METHOD_LIST+=(magnitude sparsegpt neuronrank neuronrank_fisher)
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
case "$DENSE_EVAL" in first|all|none) ;; *) echo "DENSE_EVAL '$DENSE_EVAL' must be first, all or none" >&2; exit 2 ;; esac

MODEL_TAG="$(basename "${MODEL%/}")"
MODEL_TAG="${MODEL_TAG%.gguf}"
CELL="$RESULTS_DIR/$MODEL_TAG/${SPARSITY}_${TYPE//:/-}"
EVAL_ARGS=()
[ "$EVAL_LIMIT" = none ] || EVAL_ARGS=(--eval_limit "$EVAL_LIMIT")

echo "== $MODEL at $SPARSITY $TYPE: methods ${METHOD_LIST[*]}; seeds ${SEEDS[*]}; nsamples=$NSAMPLES seqlen=$SEQLEN eval_limit=$EVAL_LIMIT -> $CELL"
FAILED=()
first=1
total=$(( ${#METHOD_LIST[@]} * ${#SEEDS[@]} ))
i=0
for seed in "${SEEDS[@]}"; do
    for method in "${METHOD_LIST[@]}"; do
        i=$((i + 1))
        dir="$CELL/$method/seed$seed"
        dense=(--no_dense_eval)
        if [ "$DENSE_EVAL" = all ] || { [ "$DENSE_EVAL" = first ] && [ "$first" = 1 ]; }; then dense=(); fi
        first=0
        if [ -e "$dir/results.json" ]; then
            if why="$("$PYTHON" "$REPO/scripts/finished.py" "$dir/results.json" model="$MODEL" \
                    prune_method="$method" sparsity_ratio="$SPARSITY" sparsity_type="$TYPE" seed="$seed" \
                    nsamples="$NSAMPLES" seqlen="$SEQLEN" eval_limit="$EVAL_LIMIT")"; then
                echo "($i/$total) skip $method seed $seed: $dir/results.json is finished"
                continue
            fi
            echo "($i/$total) rerun $method seed $seed: $why"
        fi
        mkdir -p "$dir"
        echo "($i/$total) run  $method seed $seed (log: $dir/run.log)"
        rc=0
        "$PYTHON" "$REPO/main.py" --model "$MODEL" --prune_method "$method" --sparsity_ratio "$SPARSITY" \
            --sparsity_type "$TYPE" --seed "$seed" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" \
            ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"} ${dense[@]+"${dense[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} \
            --save "$dir" > "$dir/run.log" 2>&1 || rc=$?
        if [ "$rc" = 130 ]; then
            echo "($i/$total) interrupted $method seed $seed: batch stopped (rerun this command to resume)" >&2
            exit 130
        elif [ "$rc" != 0 ]; then
            echo "($i/$total) FAILED $method seed $seed; last lines of $dir/run.log:" >&2
            tail -n 5 "$dir/run.log" >&2 || true
            FAILED+=("$method/seed$seed")
        fi
    done
done

if [ "$REPORT" = 1 ]; then
    if compgen -G "$CELL/*/seed*/results.json" > /dev/null; then
        "$PYTHON" "$REPO/scripts/report.py" "$CELL" --out "$CELL/report"
    else
        echo "no successful runs in $CELL: no report" >&2
    fi
fi
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "${#FAILED[@]} of $total runs failed: ${FAILED[*]} (rerun this command to retry them)" >&2
    exit 1
fi
