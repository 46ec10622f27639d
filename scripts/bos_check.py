"""Dense WikiText-2 perplexity with and without BOS in front of every window, on real models, each number computed
twice: by lib.eval.eval_ppl (the path main.py uses) and directly (every window scored on its own, float64
log-softmax over the model's whole logits). The measurements behind --bos auto (README, "BOS").

    OMP_NUM_THREADS=1 WANDA_DATA_DIR=../shared/data .venv/bin/python scripts/bos_check.py \
        [--models smollm2-135m gemma3-270m] [--seqlen 256] [--windows 32]

'never' is Wanda's protocol (the test split tokenised once: only window 0 starts with the tokenizer's BOS, if it
adds one); 'always' is the text's tokens with BOS in front of every window. The targets are the same text tokens
2..seqlen of each window in both (lib/eval.py).
"""
from __future__ import annotations

import argparse
import math

import torch

from lib.data import load_wikitext2_rows, resolve_data_dir, wikitext2_ids
from lib.eval import eval_ppl
from lib.models import load_model


@torch.no_grad()
def direct_ppl(model, stream: torch.Tensor, seqlen: int, nwindows: int, bos_id: int | None) -> float:
    """Each window [BOS +] stream[w*seqlen:(w+1)*seqlen] alone; exp of the mean NLL of its tokens 2..seqlen."""
    nll, count = 0.0, 0
    for w in range(nwindows):
        window = stream[w * seqlen:(w + 1) * seqlen]
        inputs = window if bos_id is None else torch.cat([torch.tensor([bos_id]), window])
        logp = torch.log_softmax(model(inputs[None], use_cache=False).logits[0].double(), dim=-1)
        first = inputs.numel() - seqlen
        nll -= logp[first:first + seqlen - 1].gather(1, window[1:, None]).sum().item()
        count += seqlen - 1
    return math.exp(nll / count)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--windows", type=int, default=32)
    args = p.parse_args()
    rows = load_wikitext2_rows("test", resolve_data_dir(None))
    print(f"WikiText-2 test, first {args.windows} windows of {args.seqlen} text tokens, float32 weights")
    print("| model | BOS per window | eval_ppl | direct | relative difference |\n|---|---|---:|---:|---:|")
    for name in args.models:
        model, tokenizer = load_model(name, dtype=torch.float32, device="cpu")
        for bos_id in (None, tokenizer.bos_token_id):
            stream = wikitext2_ids(rows, tokenizer, bos=bos_id is not None)
            path = eval_ppl(model, stream, args.seqlen, args.windows, batch_size=8, bos_id=bos_id)
            direct = direct_ppl(model, stream[0], args.seqlen, args.windows, bos_id)
            label = "never (Wanda)" if bos_id is None else f"always ({tokenizer.bos_token!r}, id {bos_id})"
            print(f"| {name} | {label} | {path:.4f} | {direct:.4f} | {abs(path - direct) / direct:.1e} |", flush=True)
        del model


if __name__ == "__main__":
    main()
