"""LoRA fine-tuning of a pruned model saved by main.py --save_model, on local C4 (or WikiText-2) text; saves the adapter.

    python lora_ft/finetune_lm.py --model out/zs_wanda/model --max_train_samples 64 --block_size 256 \
        --max_steps 40 --learning_rate 2e-4 --output_dir out/lora_wanda

Wanda's settings on a GPU (7B): --max_train_samples 30000 --block_size 1024 --num_train_epochs 1 --learning_rate 1e-4.
The adapter is dense: until it is merged with lora_ft/evaluate_ppl.py --merge_masked, base + adapter is not sparse.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from lib.cli import quiet_startup

    quiet_startup()  # Ctrl-C or SIGTERM during the imports below: one line, no traceback

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar
import logging
import time
from pathlib import Path

import torch

from lib.checks import check_model_target, check_output_dir
from lib.cli import OneLineParser, Progress, add_settings, run_cli, settings_from
from lib.config import BOS_MODES, ConfigError, Settings, setting
from lib.models import DTYPES
from lib.runinfo import save_model_atomic, write_atomic

# The phase the run is in and what it has written, for the one-line Ctrl-C / SIGTERM message.
PROGRESS = Progress()
from lora_ft.lora_utils import LoraSettings, TrainSettings, attach_lora, mean_loss, texts_to_blocks, train_lora

logger = logging.getLogger("lora_ft.finetune_lm")

@dataclass(frozen=True)
class FinetuneRun(Settings):
    """What finetune_lm.py does around the training: the model, the text, the output (flags named as Wanda's and
    HF run_clm's)."""

    group: ClassVar[str] = "run"
    model: str | None = setting(None, "folder saved by main.py --save_model (or any lib.models spec)", required=True)
    output_dir: str | None = setting(None, "where the adapter (adapter_config.json + weights) goes", required=True)
    dataset: str = setting("c4", "training text: local C4 sample (default, as Wanda) or WikiText-2 train",
                           choices=("c4", "wikitext2"))
    train_file: str | None = setting(None, "train on this .txt (one document per blank-line block) or .jsonl (a "
                                           "'text' field) instead of --dataset")
    data_dir: str | None = setting(None, "local data folder (default: $WANDA_DATA_DIR)")
    cache_dir: str = setting("llm_weights", "hub cache and GGUF conversions")
    max_train_samples: int = setting(30000, "training blocks (run_clm's meaning)", bounds="positive")
    block_size: int = setting(1024, "tokens per training block", bounds=">= 2")
    bos: str = setting("auto", "BOS token at the start of every training block (then BOS + block_size - 1 text "
                               "tokens), as main.py's --bos: auto (default: Gemma-family models, trained with BOS "
                               "at every input's start), always, never", choices=BOS_MODES)
    dtype: str | None = setting(None, "base weights' dtype (default float32 on CPU, bfloat16 on CUDA); the adapter "
                                      "trains in float32", choices=tuple(sorted(DTYPES)))


def build_parser() -> argparse.ArgumentParser:
    """The CLI, built from FinetuneRun, LoraSettings and TrainSettings (each flag declared once, with its rule)."""
    p = OneLineParser(description=__doc__.splitlines()[0])
    for settings in (FinetuneRun, LoraSettings, TrainSettings):
        add_settings(p, settings)
    return p


def read_train_file(path: Path) -> list[str]:
    """Documents from a .jsonl ('text' field) or a plain-text file (blank-line separated); a damaged file is a
    ConfigError naming it (and the line)."""
    from lib.data import read_text_file

    if not path.is_file():
        raise ConfigError(f"train_file '{path}' does not exist or is not a file")
    text = read_text_file(path)
    if path.suffix != ".jsonl":
        return [doc for doc in text.split("\n\n") if doc.strip()]
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"train_file '{path}' line {lineno} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ConfigError(f"train_file '{path}' line {lineno} has no string 'text' field")
        docs.append(row["text"])
    return docs


def check_target_modules(model_config, lora: LoraSettings) -> None:
    """--lora_target_modules must name linears of the model: checked on a weightless (meta) skeleton."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config)
    leaf_names = {name.rsplit(".", 1)[-1] for name, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in lora.target_modules if t not in leaf_names]
    if missing:
        raise ConfigError(f"lora_target_modules {missing} are not linears of this model; choose from "
                          f"{sorted(leaf_names)}")
    # A rank above a target's narrower side adds nothing a full update would not, at more memory.
    width = min(min(m.in_features, m.out_features) for name, m in skeleton.named_modules()
                if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in lora.target_modules)
    if lora.r > width:
        raise ConfigError(f"lora_r {lora.r} exceeds the narrowest target linear's width {width}; use --lora_r <= "
                          f"{width}")


def check_adapter_target(output_dir: str, model: str, cache_dir: str) -> None:
    """--output_dir is replaced as a whole: new, empty or an earlier adapter of this tool, and never in or around
    the model's folder (an adapter_config.json there makes the next load of the model apply the adapter)."""
    from lib.models import resolve_model

    source = resolve_model(model, cache_dir)[0]
    check_model_target("--output_dir", output_dir, {"--model folder": source} if Path(source).is_dir() else {})


def load_texts(args: FinetuneRun, data_dir: Path | None) -> list[str]:
    """The training documents named by --train_file or --dataset."""
    from lib.data import load_c4_texts, load_wikitext2_rows

    if args.train_file:
        return read_train_file(Path(args.train_file))
    if args.dataset == "c4":
        return load_c4_texts(data_dir)
    # WikiText rows are lines; join them into one document so blocks span lines as run_clm's do.
    return ["".join(load_wikitext2_rows("train", data_dir))]


def main(argv: list[str] | None = None) -> dict:
    """Train the adapter, save it with a train_log.json, return that log."""
    parsed = build_parser().parse_args(argv)
    args, lora, train = (settings_from(cls, parsed) for cls in (FinetuneRun, LoraSettings, TrainSettings))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from lib.data import bos_record, resolve_bos, resolve_data_dir
    from lib.models import load_config, load_model, load_tokenizer, max_sequence_length
    from lib.sparsity import check_sparsity

    PROGRESS.phase, PROGRESS.written = "check", []
    check_output_dir("--output_dir", args.output_dir)
    check_output_dir("--cache_dir", args.cache_dir)
    check_adapter_target(args.output_dir, args.model, args.cache_dir)
    data_dir = resolve_data_dir(args.data_dir)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if torch.cuda.is_available() else torch.float32)

    # Model files, text and token counts first: a bad input should fail before the model is loaded.
    model_config = load_config(args.model, args.cache_dir)
    check_target_modules(model_config, lora)
    model_max = max_sequence_length(model_config)
    if model_max is not None and args.block_size > model_max:
        raise ConfigError(f"block_size {args.block_size} exceeds the model's maximum of {model_max} positions")
    texts = load_texts(args, data_dir)
    tokenizer = load_tokenizer(args.model, args.cache_dir)
    bos_id = resolve_bos(args.bos, model_config.model_type, tokenizer)
    blocks = texts_to_blocks(texts, tokenizer, args.block_size, args.max_train_samples, bos_id)
    if train.gradient_accumulation_steps > blocks.shape[0]:
        raise ConfigError(f"gradient_accumulation_steps {train.gradient_accumulation_steps} exceeds the "
                          f"{blocks.shape[0]} training blocks; use at most {blocks.shape[0]}")
    PROGRESS.phase = "load"
    model = load_model(args.model, cache_dir=args.cache_dir, dtype=dtype)[0]
    sparsity = check_sparsity(model)[0]
    print(f"base model {args.model}: sparsity {sparsity:.4f}")
    print(f"training blocks: {blocks.shape[0]} x {blocks.shape[1]} tokens"
          + ("" if bos_id is None else f" (BOS {bos_id} first)"))

    peft_model = attach_lora(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    print(f"LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on {list(lora.target_modules)}: "
          f"{trainable:,} trainable parameters")
    start = time.time()
    PROGRESS.phase = "training"
    losses = train_lora(peft_model, blocks, train)
    seconds = time.time() - start
    # The loss on the first (up to) 8 training blocks, without dropout: one honest before/after pair.
    probe = blocks[:8]
    with peft_model.disable_adapter():
        probe_before = mean_loss(peft_model, probe)
    probe_after = mean_loss(peft_model, probe)

    out = Path(args.output_dir).expanduser()
    log = {"model": args.model, "base_sparsity": sparsity, "lora": dataclasses.asdict(lora),
           "train": dataclasses.asdict(train), "blocks": list(blocks.shape), **bos_record(bos_id, args.bos),
           "steps": len(losses), "seconds": round(seconds, 1),
           "first_step_loss": losses[0], "last_step_loss": losses[-1],
           "probe_loss_base": probe_before, "probe_loss_adapter": probe_after, "losses": losses,
           "command": " ".join(["python", "lora_ft/finetune_lm.py", *(argv if argv is not None else sys.argv[1:])])}
    PROGRESS.phase = "save"

    def save(folder: Path) -> None:
        peft_model.save_pretrained(folder)
        write_atomic(folder / "train_log.json", json.dumps(log, indent=2))

    # Adapter and train_log.json into a temporary sibling renamed over out: a kill never leaves half an adapter.
    save_model_atomic(save, None, out, record={"written_by": "lora_ft/finetune_lm.py", "model": args.model})
    PROGRESS.written.append(str(out))
    print(f"{len(losses)} steps in {seconds:.0f}s; loss {losses[0]:.4f} (first step) -> {losses[-1]:.4f} (last); "
          f"loss on {probe.shape[0]} training blocks {probe_before:.4f} (base) -> {probe_after:.4f} (base + adapter)")
    print(f"adapter saved to {out} (dense: merge with lora_ft/evaluate_ppl.py --merge_masked to keep sparsity)")
    return log


if __name__ == "__main__":
    sys.exit(run_cli(main, PROGRESS))
