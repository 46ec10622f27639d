"""LoRA on a tiny pruned model: training lowers the loss, the masked merge keeps every zero, the adapter reloads."""
from __future__ import annotations

import gzip
import json
import logging

import pytest
import torch
from transformers import LlamaForCausalLM

from _zs_helpers import byte_tokenizer, magnitude_prune_, tiny_llama
from conftest import save_model
from lora_ft.lora_utils import (LoraSettings, TrainSettings, attach_lora, lora_zero_masks, mean_loss, merge_lora,
                                texts_to_blocks, train_lora)

TEXT = ["the cat sat on the mat. the dog sat on the log. " * 8 for _ in range(6)]


def write_data(data):
    """A local data folder as lib.data reads it: TEXT as the C4 sample and, twice over, as WikiText-2 test."""
    (data / "c4").mkdir(parents=True)
    with gzip.open(data / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz", "wt") as handle:
        for text in TEXT:
            handle.write(json.dumps({"text": text}) + "\n")
    (data / "wikitext-2-raw").mkdir()
    (data / "wikitext-2-raw" / "wiki.test.raw").write_text(" = Title = \n\n" + TEXT[0] * 2 + "\n")
    return data


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def pruned(tokenizer):
    """A fresh tiny LLaMA with half of every decoder linear's weights zeroed."""
    model = tiny_llama(len(tokenizer))
    magnitude_prune_(model, 0.5)
    return model


@pytest.fixture
def blocks(tokenizer):
    return texts_to_blocks(TEXT, tokenizer, block_size=32, max_blocks=8)


def trained(model, blocks, steps: int = 15):
    """Attach Wanda's default adapter and train it briefly at a high rate (tiny model, tiny data)."""
    peft_model = attach_lora(model, LoraSettings())
    train_lora(peft_model, blocks, TrainSettings(learning_rate=1e-2, max_steps=steps, batch_size=4, logging_steps=0))
    return peft_model


def test_blocks_follow_run_clm_grouping(tokenizer):
    blocks = texts_to_blocks(["abc", "", "defgh"], tokenizer, block_size=3)
    assert blocks.tolist() == [tokenizer("abc")["input_ids"], tokenizer("def")["input_ids"]]  # tail 'gh' dropped
    assert texts_to_blocks(TEXT, tokenizer, 16, max_blocks=5).shape == (5, 16)
    with pytest.raises(ValueError, match="fewer than one block"):
        texts_to_blocks(["ab"], tokenizer, block_size=8)


def test_defaults_are_wandas_and_bad_values_are_named(pruned):
    peft_model = attach_lora(pruned, LoraSettings())
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert {n.rsplit(".", 1)[-1] for n in lora_zero_masks(peft_model)} == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="lora_r 0"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match=r"\['qkv'\].*choose from"):
        attach_lora(tiny_llama(260), LoraSettings(target_modules=("qkv",)))


def test_few_lora_steps_lower_the_training_loss(pruned, blocks):
    before = mean_loss(pruned, blocks)
    peft_model = trained(pruned, blocks)
    after = mean_loss(peft_model, blocks)
    assert after < before - 0.1
    # Only the adapter trained: the pruned base weights are untouched, zeros included.
    for name, mask in lora_zero_masks(peft_model).items():
        assert mask.float().mean().item() == pytest.approx(0.5, abs=0.02), name


def test_masked_merge_keeps_every_zero_and_unmasked_merge_fills_them(pruned, blocks, tmp_path, caplog):
    from peft import PeftModel

    reference = tiny_llama(pruned.config.vocab_size)
    reference.load_state_dict(pruned.state_dict())
    zeros = {n: p == 0 for n, p in pruned.named_parameters()}

    peft_model = trained(pruned, blocks)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged, report = merge_lora(peft_model, masked=True)
    assert report.zeros_kept and report.zeros_after == report.zeros_before
    for name, param in merged.named_parameters():
        assert torch.all(param[zeros[name]] == 0), name

    # The same adapter merged plainly: same values off the mask, pruned zeros filled, and it says so.
    plain_peft = PeftModel.from_pretrained(reference, str(tmp_path / "adapter"))
    with caplog.at_level(logging.WARNING, logger="lora_ft.lora_utils"):
        unmasked, plain_report = merge_lora(plain_peft, masked=False)
    assert plain_report.zeros_after < plain_report.zeros_before
    assert any("destroys sparsity" in r.getMessage() for r in caplog.records)
    masked_q = merged.model.layers[0].self_attn.q_proj.weight
    plain_q = unmasked.model.layers[0].self_attn.q_proj.weight
    keep = ~zeros["model.layers.0.self_attn.q_proj.weight"]
    assert torch.allclose(masked_q[keep], plain_q[keep])
    assert (plain_q[~keep] != 0).all()


def test_adapter_saves_and_reloads_to_the_same_outputs(pruned, blocks, tmp_path):
    from peft import PeftModel

    pruned.save_pretrained(tmp_path / "base")
    peft_model = trained(pruned, blocks, steps=5)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    base = LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=blocks[:2]).logits
        got = reloaded(input_ids=blocks[:2]).logits
        with reloaded.disable_adapter():
            without = reloaded(input_ids=blocks[:2]).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(without, expected, atol=1e-3)  # the adapter did something


def test_cli_trains_evaluates_and_merges_masked(tokenizer, tmp_path, capsys):
    """finetune_lm.py then evaluate_ppl.py --merge_masked on a saved tiny pruned model with local text files."""
    from lora_ft import evaluate_ppl, finetune_lm

    model = tiny_llama(len(tokenizer))
    magnitude_prune_(model, 0.5)
    save_model(model, tokenizer, tmp_path / "model")
    data = write_data(tmp_path / "data")

    log = finetune_lm.main(["--model", str(tmp_path / "model"), "--data_dir", str(data), "--output_dir",
                            str(tmp_path / "adapter"), "--max_train_samples", "8", "--block_size", "32",
                            "--max_steps", "15", "--learning_rate", "1e-2", "--per_device_train_batch_size", "4"])
    assert log["probe_loss_adapter"] < log["probe_loss_base"]
    assert log["base_sparsity"] == pytest.approx(0.5, abs=0.02)

    results = evaluate_ppl.main(["--lora_weights", str(tmp_path / "adapter"), "--data_dir", str(data),
                                 "--seqlen", "32", "--eval_limit", "4", "--merge_masked",
                                 "--save_merged", str(tmp_path / "merged")])
    assert results["model"] == str(tmp_path / "model")  # read from the adapter's config
    assert results["ppl_adapter"] < results["ppl_base"]
    assert results["merged_masked_sparsity"] == pytest.approx(results["base_sparsity"])
    assert (tmp_path / "merged" / "config.json").is_file()
    assert "pruning mask re-applied" in capsys.readouterr().out


def test_evaluate_puts_bos_in_front_of_every_window_as_main_does(tokenizer, tmp_path):
    """--bos always: evaluate_ppl's perplexity is lib.eval's with BOS per window on the same WikiText-2 stream
    (main.py's windows for a Gemma model), and differs from --bos never, which auto gives this llama."""
    from peft import PeftModel

    from lib.data import load_wikitext2_rows, wikitext2_ids
    from lib.eval import eval_ppl
    from lora_ft import evaluate_ppl, finetune_lm

    if tokenizer.bos_token_id is None:
        pytest.skip("the test tokenizer defines no BOS")
    save_model(tiny_llama(len(tokenizer)), tokenizer, tmp_path / "model")
    data = write_data(tmp_path / "data")
    finetune_lm.main(["--model", str(tmp_path / "model"), "--data_dir", str(data), "--output_dir",
                      str(tmp_path / "adapter"), "--max_train_samples", "8", "--block_size", "32", "--max_steps", "2",
                      "--per_device_train_batch_size", "4"])
    common = ["--lora_weights", str(tmp_path / "adapter"), "--data_dir", str(data), "--seqlen", "31",
              "--eval_limit", "2", "--skip_base", "--output", str(tmp_path / "eval.json")]
    with_bos = evaluate_ppl.main([*common, "--bos", "always"])
    default = evaluate_ppl.main(common)
    assert with_bos["bos"] == "always" and default["bos"] == "never" and default["bos_setting"] == "auto"
    ids = wikitext2_ids(load_wikitext2_rows("test", data), tokenizer, bos=True)
    adapted = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "model"),
                                        str(tmp_path / "adapter")).eval().get_base_model()
    expected = eval_ppl(adapted, ids, 31, 2, bos_id=tokenizer.bos_token_id)
    assert with_bos["ppl_adapter"] == pytest.approx(expected, rel=1e-5)
    assert with_bos["ppl_adapter"] != pytest.approx(default["ppl_adapter"], rel=1e-3)


def test_bos_blocks_start_with_bos_and_carry_the_text_stream(tokenizer):
    """bos_id: each block is BOS + block_size - 1 tokens of the special-token-free stream, cut in order."""
    bos = tokenizer.bos_token_id
    stream = tokenizer("abcdefgh", add_special_tokens=False)["input_ids"]
    blocks = texts_to_blocks(["abcd", "", "efgh"], tokenizer, block_size=4, bos_id=bos)
    assert blocks.tolist() == [[bos, *stream[0:3]], [bos, *stream[3:6]]]  # tail 'gh' dropped
    assert texts_to_blocks(TEXT, tokenizer, 16, max_blocks=5, bos_id=bos).shape == (5, 16)
    with pytest.raises(ValueError, match="fewer than one block of 7 after the BOS"):
        texts_to_blocks(["abcdef"], tokenizer, block_size=8, bos_id=bos)


def test_cli_trains_on_bos_blocks_when_asked(tokenizer, tmp_path, capsys):
    """--bos always (auto's choice for Gemma): the training blocks start with BOS and the log says so; auto on
    this llama gives Wanda's blocks."""
    from lora_ft import finetune_lm

    save_model(tiny_llama(len(tokenizer)), tokenizer, tmp_path / "model")
    data = write_data(tmp_path / "data")
    common = ["--model", str(tmp_path / "model"), "--data_dir", str(data), "--max_train_samples", "4",
              "--block_size", "32", "--max_steps", "1", "--per_device_train_batch_size", "4"]
    log = finetune_lm.main([*common, "--output_dir", str(tmp_path / "a"), "--bos", "always"])
    assert (log["bos"], log["bos_setting"], log["blocks"]) == ("always", "always", [4, 32])
    assert f"4 x 32 tokens (BOS {tokenizer.bos_token_id} first)" in capsys.readouterr().out
    log = finetune_lm.main([*common, "--output_dir", str(tmp_path / "b")])
    assert (log["bos"], log["bos_setting"]) == ("never", "auto")
