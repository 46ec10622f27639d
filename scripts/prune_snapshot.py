"""Snapshot of what pruning does, to prove a refactor changes nothing: run it before and after, compare the JSONs.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/prune_snapshot.py --out before.json
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/prune_snapshot.py --out after.json --compare before.json

Cases: every registered method x {unstructured, 2:4, 4:8} x tiny {llama, opt, neox, gemma2, qwen2} (the test
suite's in-process models, calibration ids [8, 32] seed 0), plus neuron granularity (with and without --shrink),
--use_variant, and the add-ons (OWL, DSnoT, permutation, RIA's settings, ADMM, gradual ADMM, depth ramp) on llama, opt and neox. Each case
records the sha256 of every weight (names, shapes, dtypes, bytes), the loss on fixed ids (float.hex, exact),
the per-layer sparsity and the fields main.py writes to results.json from the prune report (--save_stats on).
Then main.main runs end to end on saved tiny llama and opt models with fabricated data (tests/conftest.py's),
and every results.json field is recorded except timings, versions, argv, commit and peak memory.
With --embedded it runs main.py's pipeline on the embedded SmolLM2-135M instead (one run per method family and
add-on, seed 0, real data from $WANDA_DATA_DIR), recording the same results.json fields:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 WANDA_DATA_DIR=/work/shared/data python scripts/prune_snapshot.py \
        --embedded --out before_embedded.json
A case that is refused records its one-line error, so refusals are compared too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import main  # noqa: E402
from conftest import make_tiny_model, make_tokenizer, write_fake_data  # noqa: E402
from lib.cli import settings_from  # noqa: E402
from lib.config import ConfigError, PruneConfig  # noqa: E402
from lib.methods import METHODS  # noqa: E402
from lib.prune import prune_model  # noqa: E402

FAMILIES = ("llama", "opt", "neox", "gemma2", "qwen2")
TYPES = ("unstructured", "2:4", "4:8")
ADDON_FAMILIES = ("llama", "opt", "neox")
# results.json fields that differ between any two runs of the same code.
VOLATILE = {"seconds", "versions", "argv", "git_commit", "peak_rss_mb", "peak_cuda_mb"}


def prune_config(flags: list[str]) -> PruneConfig:
    """The PruneConfig main.py would build from these flags."""
    return settings_from(PruneConfig, main.build_parser().parse_args(flags))


def report_fields(report, config: PruneConfig) -> dict:
    """What the prune report puts in results.json (besides layer_sparsity), as main.py writes it."""
    if hasattr(report, "results"):  # the add-on registry's report: each add-on names its own fields
        fields = dict(report.results())
    else:
        fields = {}
        if config.layer_ratios != "uniform":
            fields.update(layer_ratios=report.layer_ratios, outlier_ratios=report.outlier_ratios)
        if config.refine != "none":
            fields["refine_swaps"] = report.refine_swaps
        if config.permute:
            fields.update(permutations=report.permutations, folded_permutations=report.folded_permutations)
    fields["layer_stats"] = report.layer_stats
    return fields


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every state-dict entry's name, shape, dtype and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prune_case(family: str, flags: list[str]) -> dict:
    """Prune a fresh tiny model with these flags -> weights hash, loss, per-layer sparsity, report fields."""
    try:
        config = prune_config(flags)
        model = make_tiny_model(family)
        calib_ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
        report = prune_model(model, calib_ids, config, record_stats=True)
    except ConfigError as err:
        return {"error": str(err)}
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    return {"sha256": weights_sha256(model), "loss": float(loss).hex(), "layer_sparsity": report.layer_sparsity,
            "report": report_fields(report, config)}


def addon_cases() -> list[list[str]]:
    """Flag sets beyond method x type: granularities, the variant, the add-ons and their settings."""
    neuron = sorted(name for name, m in METHODS.items() if m.prune_layer is not None)
    variant = sorted(name for name, m in METHODS.items() if m.supports_variant)
    cases = [["--prune_method", m, "--nr_granularity", "neuron", *shrink] for m in neuron for shrink in ([], ["--shrink"])]
    cases += [["--prune_method", m, "--use_variant"] for m in variant]
    for method in ("wanda", "wanda_spiky", "ria", "sparsegpt", "neuronrank"):
        cases.append(["--prune_method", method, "--layer_ratios", "owl"])
    cases += [
        ["--prune_method", "ria", "--layer_ratios", "owl", "--owl_score", "method"],
        ["--prune_method", "wanda", "--layer_ratios", "owl", "--owl_m", "3", "--owl_lambda", "0.2",
         "--sparsity_ratio", "0.7"],
        ["--prune_method", "wanda", "--refine", "dsnot"],
        ["--prune_method", "wanda", "--refine", "dsnot", "--sparsity_type", "2:4"],
        ["--prune_method", "wanda", "--refine", "dsnot", "--dsnot_same_sign", "--dsnot_skip", "none"],
        ["--prune_method", "ria", "--refine", "dsnot", "--dsnot_cycles", "7", "--dsnot_threshold", "0"],
        ["--prune_method", "wanda_spiky", "--layer_ratios", "owl", "--refine", "dsnot"],
        ["--prune_method", "wanda", "--permute", "--sparsity_type", "2:4"],
        ["--prune_method", "ria", "--permute", "--sparsity_type", "4:8"],
        ["--prune_method", "wanda", "--permute", "--refine", "dsnot", "--sparsity_type", "2:4",
         "--dsnot_skip", "none"],
        ["--prune_method", "ria", "--ria_group", "row", "--ria_alpha", "1"],
        ["--prune_method", "neuronrank_fisher", "--nr_exp", "2", "--neuronrank_max_classes", "4"],
        ["--prune_method", "wanda_select", "--sel_idf_exp", "0.5", "--sel_spiky_exp", "2"],
        ["--prune_method", "sparsegpt", "--blocksize", "32", "--percdamp", "0.1", "--sparsity_ratio", "0.6"],
        ["--prune_method", "magnitude", "--sparsity_ratio", "0.3"],
        ["--prune_method", "wanda", "--reconstruct", "admm", "--sparsity_type", "2:4"],
        ["--prune_method", "wanda", "--reconstruct", "admm_gradual", "--sparsity_ratio", "0.7"],
        ["--prune_method", "wanda_spiky", "--reconstruct", "admm_gradual", "--sparsity_type", "4:8"],
        ["--prune_method", "ria", "--permute", "--sparsity_type", "2:4", "--reconstruct", "admm"],
        ["--prune_method", "wanda", "--layer_ratios", "depth_ramp", "--reconstruct", "admm", "--sparsity_ratio", "0.7"],
        # Refused combinations: the message must stay the same too.
        ["--prune_method", "sparsegpt", "--refine", "dsnot"],
        ["--prune_method", "wanda", "--permute"],
        ["--prune_method", "wanda", "--layer_ratios", "owl", "--sparsity_type", "2:4"],
        ["--prune_method", "neuronrank", "--nr_granularity", "neuron", "--refine", "dsnot"],
        ["--prune_method", "sparsegpt", "--use_variant"],
        ["--prune_method", "wanda", "--shrink"],
        ["--prune_method", "neuronrank", "--nr_exp", "-1"],
        ["--prune_method", "neuronrank_fisher", "--neuronrank_max_classes", "0"],
    ]
    return cases


MAIN_CASES = [
    ["--prune_method", "wanda"],
    ["--prune_method", "sparsegpt", "--sparsity_type", "2:4"],
    ["--prune_method", "wanda_spiky", "--layer_ratios", "owl", "--refine", "dsnot"],
    ["--prune_method", "ria", "--sparsity_type", "2:4", "--permute"],
    ["--prune_method", "neuronrank", "--nr_granularity", "neuron", "--shrink"],
    ["--prune_method", "neuronrank_fisher", "--use_variant"],
    ["--prune_method", "wanda_select", "--calib_dataset", "wikitext2"],
]


def main_cases(work: Path) -> dict:
    """main.main end to end on saved tiny models -> {case: results.json without the volatile fields}."""
    data = write_fake_data(work / "data")
    out: dict[str, dict] = {}
    for family in ("llama", "opt"):
        folder = work / f"tiny-{family}"
        make_tiny_model(family).save_pretrained(folder)
        make_tokenizer().save_pretrained(folder)
        for flags in MAIN_CASES:
            save = work / "runs" / f"{family}{'_'.join(flags)}"
            argv = ["--model", str(folder), "--nsamples", "4", "--seqlen", "32", "--eval_limit", "4",
                    "--data_dir", str(data), "--save", str(save), "--save_stats", *flags]
            status = main.main(argv)
            # paths under the temporary folder differ per invocation, so they are recorded relative to it
            results = json.loads((save / "results.json").read_text().replace(str(work), "<work>")) \
                if status == 0 else {}
            results["model"] = family  # the temporary folder's name differs per run
            out[f"{family} {' '.join(flags)}"] = {"status": status,
                                                  **{k: v for k, v in results.items() if k not in VOLATILE}}
    return out


EMBEDDED_CASES = [
    ["--prune_method", "wanda"],
    ["--prune_method", "magnitude", "--sparsity_type", "2:4"],
    ["--prune_method", "sparsegpt"],
    ["--prune_method", "ablate_wanda_iter", "--sparsity_type", "4:8"],
    ["--prune_method", "ria", "--sparsity_type", "2:4", "--permute"],
    ["--prune_method", "wanda_spiky", "--layer_ratios", "owl", "--refine", "dsnot"],
    ["--prune_method", "neuronrank", "--nr_granularity", "neuron", "--shrink"],
    ["--prune_method", "neuronrank_fisher", "--use_variant"],
]


def embedded_cases(work: Path) -> dict:
    """main.main on the embedded SmolLM2-135M ($WANDA_DATA_DIR data), seed 0 -> {case: results.json fields}."""
    out: dict[str, dict] = {}
    for i, flags in enumerate(EMBEDDED_CASES):
        save = work / f"run{i}"
        argv = ["--model", "smollm2-135m", "--nsamples", "8", "--seqlen", "256", "--eval_limit", "8",
                "--eval_batch_size", "4", "--seed", "0", "--save", str(save), "--save_stats", *flags]
        status = main.main(argv)
        results = json.loads((save / "results.json").read_text()) if status == 0 else {}
        out[f"smollm2-135m {' '.join(flags)}"] = {"status": status,
                                                  **{k: v for k, v in results.items() if k not in VOLATILE}}
    return out


def snapshot() -> dict:
    """Every case, keyed by 'family flags'."""
    cases: dict[str, dict] = {}
    for family in FAMILIES:
        for method in sorted(METHODS):
            for sparsity_type in TYPES:
                flags = ["--prune_method", method, "--sparsity_type", sparsity_type]
                cases[f"{family} {' '.join(flags)}"] = prune_case(family, flags)
    for family in ADDON_FAMILIES:
        for flags in addon_cases():
            cases[f"{family} {' '.join(flags)}"] = prune_case(family, flags)
    with tempfile.TemporaryDirectory() as work:
        cases.update({f"main {k}": v for k, v in main_cases(Path(work)).items()})
    return cases


def compare(ours: dict, theirs: dict) -> list[str]:
    """Lines naming every case that is missing on one side or differs."""
    lines = [f"only in the reference: {k}" for k in theirs if k not in ours]
    lines += [f"new case: {k}" for k in ours if k not in theirs]
    for key in ours.keys() & theirs.keys():
        if ours[key] != theirs[key]:
            fields = sorted(f for f in ours[key].keys() | theirs[key].keys()
                            if ours[key].get(f) != theirs[key].get(f))
            lines.append(f"differs: {key}: {fields}")
    return sorted(lines)


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--compare", help="an earlier snapshot; exit 1 if any case differs")
    parser.add_argument("--embedded", action="store_true",
                        help="instead: main.py on the embedded smollm2-135m (a few minutes per family)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.embedded:
        with tempfile.TemporaryDirectory() as work:
            cases = embedded_cases(Path(work))
    else:
        cases = snapshot()
    Path(args.out).write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
    print(f"{len(cases)} cases ({sum('error' in c for c in cases.values())} refused) -> {args.out}")
    if args.compare:
        diff = compare(cases, json.loads(Path(args.compare).read_text()))
        print("\n".join(diff) or f"identical to {args.compare}")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(cli())
