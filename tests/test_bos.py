"""BOS-aware windows (--bos): perplexity checked against a direct computation, window by window, on tiny models
whose tokenizer adds BOS (as Llama and Gemma) and whose tokenizer does not (as Qwen); the calibration windows;
the auto rule; Wanda's protocol unchanged."""
from __future__ import annotations

import json
import pytest
import torch

import main
from conftest import BOS_ID, direct_ppl, make_tiny_model, make_tokenizer, save_model
from lib.data import calibration_windows, load_c4_texts, load_wikitext2_rows, resolve_bos, token_ids
from lib.eval import eval_ppl
from lib.protocols import PROTOCOLS

SEQLEN, WINDOWS = 32, 3


def wiki_text(data_dir) -> str:
    return "\n\n".join(load_wikitext2_rows("test", data_dir))


@pytest.mark.parametrize("tokenizer_adds_bos", [True, False])
@pytest.mark.parametrize("mode", ["always", "never"])
def test_cli_perplexity_equals_the_direct_computation(tiny_model_dir, data_dir, tmp_path, tokenizer_adds_bos, mode):
    folder = tiny_model_dir("llama", bos=tokenizer_adds_bos)
    out = tmp_path / "out"
    assert main.main(["--model", str(folder), "--prune_method", "magnitude", "--seqlen", str(SEQLEN), "--eval_limit",
                      str(WINDOWS), "--eval_batch_size", "2", "--bos", mode, "--data_dir", str(data_dir),
                      "--save", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["bos"], results["bos_setting"]) == (mode, mode)
    tokenizer = make_tokenizer(tokenizer_adds_bos)
    text = wiki_text(data_dir)
    if mode == "always":  # the text's own tokens; BOS in front of every window
        stream, bos_id = tokenizer(text, add_special_tokens=False).input_ids, BOS_ID
    else:  # Wanda: the text tokenised once as the tokenizer does it (its BOS, if any, opens window 0 only)
        stream, bos_id = tokenizer(text).input_ids, None
    assert (stream[0] == BOS_ID) == (tokenizer_adds_bos and mode == "never")
    expected = direct_ppl(make_tiny_model("llama"), stream, SEQLEN, WINDOWS, bos_id)
    assert results["ppl_dense"] == pytest.approx(expected, rel=1e-5)


def test_bos_changes_the_context_not_the_targets(data_dir):
    """Same windows of text tokens with and without BOS: the direct computation and eval_ppl agree in both, and
    BOS changes the perplexity (so the test would notice it being dropped)."""
    model, tokenizer = make_tiny_model("llama"), make_tokenizer(bos=True)
    ids = token_ids(wiki_text(data_dir), tokenizer, bos=True)
    with_bos = eval_ppl(model, ids[None], SEQLEN, WINDOWS, batch_size=3, bos_id=BOS_ID)
    without = eval_ppl(model, ids[None], SEQLEN, WINDOWS, batch_size=1)
    assert with_bos == pytest.approx(direct_ppl(model, ids.tolist(), SEQLEN, WINDOWS, BOS_ID), rel=1e-5)
    assert without == pytest.approx(direct_ppl(model, ids.tolist(), SEQLEN, WINDOWS, None), rel=1e-5)
    assert abs(with_bos - without) > 1e-3 * without


def test_calibration_windows_are_the_same_draw_of_text_with_bos_in_front(data_dir):
    texts = load_c4_texts(data_dir)
    tokenizer = make_tokenizer(bos=True)
    plain = calibration_windows("c4", texts, tokenizer, 6, 3, 16)
    windows = calibration_windows("c4", texts, tokenizer, 6, 3, 16, bos_id=BOS_ID)
    assert plain.shape == (6, 16) and windows.shape == (6, 17)
    assert (windows[:, 0] == BOS_ID).all() and not (windows[:, 1:] == BOS_ID).any()  # text tokens only after it
    # Each window is seqlen consecutive tokens of one document.
    docs = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    for row in windows[:, 1:].tolist():
        assert any(any(d[s:s + 16] == row for s in range(len(d) - 15)) for d in docs)


def test_auto_gives_gemma_bos_and_keeps_wanda_protocol_elsewhere():
    adds, plain = make_tokenizer(bos=True), make_tokenizer(bos=False)
    for model_type in ("gemma", "gemma2", "gemma3_text"):
        assert resolve_bos("auto", model_type, adds) == BOS_ID
    for model_type in ("llama", "opt", "gpt_neox", "qwen2", "mistral"):
        assert resolve_bos("auto", model_type, adds) is None
    assert resolve_bos("never", "gemma3_text", adds) is None
    assert resolve_bos("always", "llama", adds) == BOS_ID
    assert resolve_bos("always", "llama", plain) == BOS_ID  # named, not added by the tokenizer: added here
    assert resolve_bos("auto", "gemma2", make_tokenizer(bos_token=None)) is None  # no BOS token to give


@pytest.mark.parametrize("protocol,bos", [([], "always"), (["--protocol", "wanda"], "never")])
def test_auto_on_a_gemma_model_runs_with_bos_and_the_wanda_protocol_without(tmp_path, data_dir, protocol, bos):
    folder = save_model(make_tiny_model("gemma2", bos_token_id=BOS_ID), make_tokenizer(bos=True),
                        tmp_path / "tiny-gemma2")
    out = tmp_path / "out"
    assert main.main(["--model", str(folder), *protocol, "--prune_method", "wanda", "--nsamples", "2", "--seqlen",
                      "16", "--eval_limit", "2", "--data_dir", str(data_dir), "--save", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["bos"], results["bos_setting"]) == (bos, "never" if protocol else "auto")


def test_always_without_a_bos_token_is_a_one_line_error(data_dir, tmp_path, capsys):
    folder = save_model(make_tiny_model("llama"), make_tokenizer(bos_token=None), tmp_path / "tiny-no-bos")
    out = tmp_path / "out"
    assert main.main(["--model", str(folder), "--bos", "always", "--data_dir", str(data_dir), "--seqlen", "16",
                      "--save", str(out)]) == 2
    assert "defines no BOS token" in capsys.readouterr().err and not out.exists()


def test_seqlen_leaves_room_for_bos():
    assert main.choose_seqlen(None, 256, use_max=True, bos=True) == 255
    assert main.choose_seqlen(None, 256, use_max=True) == 256
    with pytest.raises(main.ConfigError, match="less the BOS"):
        main.choose_seqlen(256, 256, bos=True)


def test_wanda_protocol_never_adds_bos_and_the_others_decide_by_model():
    assert PROTOCOLS["wanda"]["bos"] == "never"
    assert PROTOCOLS["experiment"]["bos"] == PROTOCOLS["quick"]["bos"] == "auto"


def test_lm_eval_gives_a_bos_adding_tokenizer_its_bos():
    """Zero-shot (--eval_zero_shot) uses lm-eval's default: the tokenizer's own special tokens, so every request
    of a model whose tokenizer adds BOS (Gemma's does) starts with BOS, context and batch encodings alike."""
    from lm_eval.models.huggingface import HFLM

    model = make_tiny_model("gemma2", bos_token_id=BOS_ID)
    lm = HFLM(pretrained=model, tokenizer=make_tokenizer(bos=True), batch_size=1)
    assert lm.tok_encode("the cat sat")[0] == BOS_ID
    ids, mask = lm.tok_batch_encode(["the cat sat", "a dog"])  # left-padded
    assert [row[keep.bool()][0].item() for row, keep in zip(ids, mask)] == [BOS_ID, BOS_ID]
