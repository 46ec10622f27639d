"""Shared fixtures: tiny in-process models of each family, a tokenizer built in-process, fabricated data.

Run: .venv/bin/python -m pytest -q tests
Nothing here downloads anything; the hub is switched off for the whole session.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models gain nothing from threads, and CI machines have 2 cores: avoid oversubscription.
torch.set_num_threads(1)

ARCHS = ("llama", "opt", "neox")
# Current Hugging Face decoders beyond the three families every test covers: q/k/v biases (qwen2), q/k norms
# (qwen3), sandwich norms and soft-capping (gemma2), sliding-window attention (mistral), fused qkv and gate_up
# linears (phi3), parallel attention and MLP (falcon).
MORE_ARCHS = ("qwen2", "qwen3", "mistral", "gemma2", "phi3", "falcon")
WORDS = ("the cat dog sat on mat a big red blue run ran fast slow tree house river stone light dark "
         "king queen moon sun star sky sea land fire water").split()


def make_tiny_model(arch: str, vocab_size: int = 128, seed: int = 0, **overrides):
    """A 2-layer model of one family with widths divisible by 8, in eval mode; overrides go to its config."""
    import transformers

    families = {"llama": "Llama", "opt": "OPT", "neox": "GPTNeoX", "qwen2": "Qwen2", "qwen3": "Qwen3",
                "mistral": "Mistral", "gemma2": "Gemma2", "phi3": "Phi3", "falcon": "Falcon"}
    if arch not in families:
        raise ValueError(f"unknown tiny arch '{arch}'; choose from {sorted(families)}")
    kwargs = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=vocab_size,
                  max_position_embeddings=256)
    if arch == "llama":
        kwargs.update(intermediate_size=128, num_key_value_heads=2)
    elif arch == "opt":
        kwargs.update(ffn_dim=128, word_embed_proj_dim=64)
    elif arch == "neox":
        kwargs.update(intermediate_size=128)
    elif arch in MORE_ARCHS:
        kwargs.update(pad_token_id=0, bos_token_id=1, eos_token_id=1)
        if arch != "falcon":
            kwargs.update(intermediate_size=128, num_key_value_heads=2, head_dim=16)
    kwargs.update(overrides)
    name = families[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, f"{name}Config")(**kwargs)
    return getattr(transformers, f"{name}ForCausalLM")(config).eval()


def fabricate_text(n_words: int, seed: int) -> str:
    """Deterministic pseudo-sentences over a small vocabulary."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


BOS_ID = 6  # make_tokenizer(bos=True)'s BOS


def save_model(model, tokenizer, folder: Path) -> Path:
    """model and tokenizer saved where main.py and lora_ft load a model by path -> folder."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tokenizer(bos: bool = False, bos_token: str | None = "<bos>"):
    """A small word-level tokenizer (vocab < 128) built in-process, wrapped for transformers. bos: it puts
    '<bos>' (BOS_ID) in front of every text, as Llama and Gemma tokenizers do; else it adds nothing, though it
    names bos_token (as GPT-NeoX's; None: no BOS token, as Qwen's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "\n": 2, "=": 3, ".": 4, ",": 5, "<bos>": BOS_ID}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    if not bos:
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", bos_token=bos_token)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", bos_token="<bos>")


def direct_ppl(model, stream: list[int], seqlen: int, nwindows: int, bos_id: int | None) -> float:
    """The oracle: each window of seqlen stream tokens scored on its own (batch 1, float64 log-softmax), BOS in
    front when bos_id is given; targets are the window's tokens 2..seqlen either way; exp of their mean NLL."""
    nll, count = 0.0, 0
    for w in range(nwindows):
        window = stream[w * seqlen:(w + 1) * seqlen]
        inputs = ([bos_id] if bos_id is not None else []) + window
        logp = torch.log_softmax(model(torch.tensor([inputs])).logits[0].double(), dim=-1)
        first = len(inputs) - seqlen  # the position that sees the window's first token
        for k in range(1, seqlen):
            nll -= logp[first + k - 1, window[k]].item()
            count += 1
    return math.exp(nll / count)


@pytest.fixture
def tiny_model():
    """Factory: tiny_model('llama' | 'opt' | 'neox') -> fresh model (pruning mutates it)."""
    return make_tiny_model


@pytest.fixture
def calib_ids():
    """Calibration ids [8, 32] drawn with a fixed seed."""
    return torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))


def write_fake_data(root: Path) -> Path:
    """Fabricated WikiText-2 and C4 files in root, laid out like ../shared/data -> root."""
    wiki = root / "wikitext-2-raw"
    wiki.mkdir(parents=True)
    for split, seed in (("test", 1), ("valid", 2), ("train", 3)):
        lines = [" \n", " = Title = \n", " \n"] + [f" {fabricate_text(40, seed * 100 + i)} . \n" for i in range(60)]
        (wiki / f"wiki.{split}.raw").write_text("".join(lines))
    (root / "c4").mkdir()
    with gzip.open(root / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz", "wt") as handle:
        for i in range(30):
            handle.write(json.dumps({"text": fabricate_text(20 + 10 * i, 1000 + i), "url": f"u{i}"}) + "\n")
    return root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder laid out like ../shared/data with fabricated WikiText-2 and C4 files."""
    return write_fake_data(tmp_path / "data")


@pytest.fixture
def tiny_model_dir(tmp_path: Path):
    """Factory: a saved tiny model + tokenizer folder that main.py can load by path."""
    def build(arch: str = "llama", bos: bool = False) -> Path:
        return save_model(make_tiny_model(arch), make_tokenizer(bos), tmp_path / f"tiny-{arch}{'-bos' if bos else ''}")
    return build
