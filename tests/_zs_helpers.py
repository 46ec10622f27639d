"""Tiny in-process models, a byte-level tokenizer and a made-up local lm-eval task for the zero-shot and LoRA tests.

Nothing here downloads: the tokenizer is built with the `tokenizers` library over the 256 byte symbols.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import make_tiny_model

SPECIALS = ["<s>", "</s>", "<unk>", "<pad>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: any text encodes, vocab = 256 bytes + 4 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """The STYLE.md tiny LLaMA (2 layers, width 64), eval mode, fixed seed, with this tokenizer's special ids."""
    return make_tiny_model("llama", vocab_size, seed, max_position_embeddings=512, bos_token_id=0, eos_token_id=1,
                           pad_token_id=3)


def magnitude_prune_(model: torch.nn.Module, ratio: float = 0.5) -> None:
    """Zero the smallest-|w| `ratio` of each row of every decoder linear, in place (a stand-in for lib.prune)."""
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (m for m in layer.modules() if isinstance(m, torch.nn.Linear)):
                weight = linear.weight
                k = int(weight.shape[1] * ratio)
                idx = weight.abs().argsort(dim=1)[:, :k]
                weight.scatter_(1, idx, 0.0)


TINY_ITEMS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green", "loud"], "label": 0},
    {"question": "Two plus two equals", "choices": ["five", "four", "seven"], "label": 1},
    {"question": "Ice is made of frozen", "choices": ["sand", "fire", "water"], "label": 2},
    {"question": "A cat says", "choices": ["meow", "moo", "quack"], "label": 0},
    {"question": "The sun rises in the", "choices": ["west", "east", "sea"], "label": 1},
]

TINY_TASK_YAML = """\
tag: zeroshot_local
task: {name}_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: ZEROSHOT_DATA_DIR/{name}/validation.jsonl
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_local_task(data_dir: Path, name: str = "tinyqa", items: list[dict] | None = None,
                     with_data: bool = True) -> Path:
    """Lay out data_dir/zeroshot/ like ../shared/data/zeroshot: tasks/<name>_local.yaml (with the token) + <name>/validation.jsonl."""
    root = Path(data_dir) / "zeroshot"
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "tasks" / f"{name}_local.yaml").write_text(TINY_TASK_YAML.format(name=name))
    if with_data:
        (root / name).mkdir(exist_ok=True)
        rows = items if items is not None else TINY_ITEMS
        (root / name / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
