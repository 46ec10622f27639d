#!/usr/bin/env bash
# scripts/run_selectivity_experiments.sh smollm2-135m 0.5 [unstructured|2:4|4:8] [--seeds 0 1 2] [--all-methods] [--no-report]
#
# Prunes MODEL to SPARSITY with the baseline wanda and the selectivity methods, once per calibration seed,
# into  $RESULTS_DIR/<model>/<sparsity>_<type>/<method>/seed<k>/results.json  (type "2:4" is written "2-4"
# in the path), then writes the comparison report to  $RESULTS_DIR/<model>/<sparsity>_<type>/report/.
# A thin caller of the experiment runner: the grid is experiments/selectivity_cell.toml, run with
#   python scripts/experiment.py run experiments/selectivity_cell.toml --models MODEL --results_dir CELL \
#       --set sparsity_ratio=SPARSITY sparsity_type=TYPE --labels METHOD... [--seeds ...] [--protocol ...]
# so resume, failures, Ctrl-C/SIGTERM and the other executors are the runner's (README, "Experiments").
#
#   --seeds S...     calibration seeds (default 0 1 2); also "--seeds 0,1,2"
#   --all-methods    also magnitude, sparsegpt, neuronrank, neuronrank_fisher
#   --no-report      skip the report
#
# Environment:
#   PROTOCOL=quick      the named protocol (lib/protocols.py); NSAMPLES, SEQLEN, EVAL_LIMIT override its sizes
#   PYTHON=.venv/bin/python (else python3)  RESULTS_DIR=<repo>/results
#   METHODS="wanda wanda_idf wanda_spiky wanda_select"   the method list (replaces it; --all-methods adds to it)
#   RUNNER_ARGS="..."   more runner flags, e.g. "--executor processes --workers 2" or "--set permute=true"
set -euo pipefail

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
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
read -r -a METHOD_LIST <<< "${METHODS:-wanda wanda_idf wanda_spiky wanda_select}"
[ "$ALL_METHODS" = 1 ] && METHOD_LIST+=(magnitude sparsegpt neuronrank neuronrank_fisher)
read -r -a RUNNER <<< "${RUNNER_ARGS:-}"
SETS=("sparsity_ratio=$SPARSITY" "sparsity_type=$TYPE")
[ -z "${NSAMPLES:-}" ] || SETS+=("nsamples=$NSAMPLES")
[ -z "${SEQLEN:-}" ] || SETS+=("seqlen=$SEQLEN")
[ -z "${EVAL_LIMIT:-}" ] || SETS+=("eval_limit=$EVAL_LIMIT")

MODEL_TAG="$(basename "${MODEL%/}")"
MODEL_TAG="${MODEL_TAG%.gguf}"
CELL="${RESULTS_DIR:-$REPO/results}/$MODEL_TAG/${SPARSITY}_${TYPE//:/-}"
COMMON=(experiments/selectivity_cell.toml --models "$MODEL" --results_dir "$CELL" --protocol "${PROTOCOL:-quick}"
        --labels "${METHOD_LIST[@]}" --set "${SETS[@]}")
[ ${#SEEDS[@]} -eq 0 ] || COMMON+=(--seeds "${SEEDS[@]}")
cd "$REPO"
status=0
"$PYTHON" scripts/experiment.py run "${COMMON[@]}" ${RUNNER[@]+"${RUNNER[@]}"} || status=$?
case "$status" in 130|143|2) exit "$status" ;; esac
if [ "$REPORT" = 1 ]; then
    "$PYTHON" scripts/experiment.py report "${COMMON[@]}" --out "$CELL/report" || { [ "$status" != 0 ] || status=$?; }
fi
exit "$status"
