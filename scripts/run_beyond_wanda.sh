#!/usr/bin/env bash
# scripts/run_beyond_wanda.sh [SEED...]
#
# OWL, DSnoT and RIA (RESULTS.md) against wanda and sparsegpt on the embedded smollm2-135m, experiment protocol
# (--nsamples 16 --seqlen 256 --eval_limit 32 --eval_batch_size 8), one run at a time, seeds 0 1 2 by default:
#   50% unstructured: wanda, wanda+owl, wanda+dsnot, wanda+dsnot with the sign check, ria, sparsegpt
#   2:4:              wanda, wanda+dsnot, ria, ria+permute, sparsegpt
#   70% unstructured: wanda, wanda+owl (OWL's published gains are at 70%)
# into $RESULTS_DIR/<label>/seed<k>/results.json (default results/beyond_wanda), then prints one line per run:
# label, seed, ppl_pruned, measured sparsity, prune seconds, exactly as results.json holds them.
# Resume: a run whose results.json exists is skipped. A failed run is reported and the batch goes on.
# Environment: PYTHON (default .venv/bin/python, else python3), RESULTS_DIR, WANDA_DATA_DIR (the data folder),
# LABELS (space-separated labels to run, default all; e.g. LABELS="u50_wanda nm24_ria" leaves the slow sparsegpt out).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
RESULTS_DIR="${RESULTS_DIR:-$REPO/results/beyond_wanda}"
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2)
PROTOCOL=(--model smollm2-135m --nsamples 16 --seqlen 256 --eval_limit 32 --eval_batch_size 8 --no_dense_eval)

# label | main.py arguments
RUNS=(
    "u50_wanda|--prune_method wanda --sparsity_ratio 0.5"
    "u50_wanda_owl|--prune_method wanda --sparsity_ratio 0.5 --layer_ratios owl"
    "u50_wanda_dsnot|--prune_method wanda --sparsity_ratio 0.5 --refine dsnot"
    "u50_wanda_dsnot_samesign|--prune_method wanda --sparsity_ratio 0.5 --refine dsnot --dsnot_same_sign"
    "u50_ria|--prune_method ria --sparsity_ratio 0.5"
    "u50_sparsegpt|--prune_method sparsegpt --sparsity_ratio 0.5"
    "nm24_wanda|--prune_method wanda --sparsity_type 2:4"
    "nm24_wanda_dsnot|--prune_method wanda --sparsity_type 2:4 --refine dsnot"
    "nm24_ria|--prune_method ria --sparsity_type 2:4"
    "nm24_ria_permute|--prune_method ria --sparsity_type 2:4 --permute"
    "nm24_sparsegpt|--prune_method sparsegpt --sparsity_type 2:4"
    "u70_wanda|--prune_method wanda --sparsity_ratio 0.7"
    "u70_wanda_owl|--prune_method wanda --sparsity_ratio 0.7 --layer_ratios owl"
)

failed=()
for seed in "${SEEDS[@]}"; do
    for run in "${RUNS[@]}"; do
        label="${run%%|*}"
        [ -z "${LABELS:-}" ] || [[ " $LABELS " == *" $label "* ]] || continue
        read -r -a args <<< "${run#*|}"
        out="$RESULTS_DIR/$label/seed$seed"
        [ -f "$out/results.json" ] && continue
        mkdir -p "$out"
        echo "== $label seed $seed" >&2
        if ! (cd "$REPO" && "$PYTHON" main.py "${PROTOCOL[@]}" "${args[@]}" --seed "$seed" --save "$out" \
                > "$out/run.log" 2>&1); then
            echo "FAILED: $label seed $seed (log: $out/run.log)" >&2
            failed+=("$label/seed$seed")
        fi
    done
done

"$PYTHON" - "$RESULTS_DIR" <<'EOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*/seed*/results.json")):
    r = json.loads(path.read_text())
    print(f"{path.parent.parent.name:<20} {path.parent.name:<6} ppl {r['ppl_pruned']:.4f}  sparsity "
          f"{r['measured_sparsity']:.4f}  prune {r['seconds']['prune']:.1f}s")
EOF
[ ${#failed[@]} -eq 0 ] || { echo "failed runs: ${failed[*]}" >&2; exit 1; }
