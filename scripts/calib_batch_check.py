"""Prune a real model twice, with --calib_batch_size 1 and automatic (all windows in one call), and count the mask
entries that differ: 0 means the method is invariant to the calibration batch, as --help promises.

    PYTHONPATH=. WANDA_DATA_DIR=../shared/data python scripts/calib_batch_check.py --seqlen 256 --nsamples 8 \
        sparsegpt neuronrank neuronrank_fisher wanda_select wanda
"""
from __future__ import annotations

import argparse

import torch


def masks(model_spec: str, method: str, calib: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Every decoder linear's pruned entries (bool) after pruning with calib_batch_size batch."""
    from lib.config import PruneConfig
    from lib.models import load_model
    from lib.prune import prune_model

    model, _ = load_model(model_spec, dtype=torch.float32, device="cpu")
    prune_model(model, calib, PruneConfig(prune_method=method, nsamples=calib.shape[0], calib_batch_size=batch))
    return [p == 0 for name, p in model.named_parameters() if ".layers." in name and p.dim() == 2]


def main() -> None:
    from lib.data import calibration_windows, load_calibration_texts, resolve_data_dir
    from lib.models import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts = load_calibration_texts("c4", resolve_data_dir(None))
    calib = calibration_windows("c4", texts, load_tokenizer(args.model), args.nsamples, args.seed, args.seqlen,
                                source="c4")
    for method in args.methods:
        one, auto = masks(args.model, method, calib, 1), masks(args.model, method, calib, 0)
        differ = sum(int((a != b).sum()) for a, b in zip(one, auto))
        print(f"{method}: {differ} of {sum(a.numel() for a in one)} mask entries differ between "
              f"--calib_batch_size 1 and automatic (nsamples {args.nsamples}, seqlen {args.seqlen}, seed {args.seed})",
              flush=True)


if __name__ == "__main__":
    main()
