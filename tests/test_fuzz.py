"""Every flag of main.py and lora_ft's two scripts x {0, negative, huge, NaN, inf, text}, and damaged copies of
the data, model and output locations: a bad value is exit status 2 and one line naming it, with no traceback,
nothing written, and the model never loaded. Values that are valid reach the model load, which is stubbed
out, so the whole suite costs what the checks cost.

A post-load tier (at the end) then runs every flag once, valid, on a real tiny model with nothing stubbed.

Run: .venv/bin/python -m pytest -q tests/test_fuzz.py
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import shutil
from pathlib import Path

import pytest

import main
from conftest import make_tiny_model, make_tokenizer, save_model
from lib.cli import run_cli
from lib.config import PruneConfig, RunConfig

VALUES = {"zero": "0", "negative": "-1", "huge": "1000000000", "nan": "nan", "inf": "inf", "text": "abc"}
FLOAT_HUGE = "1e30"

# (flag, value kind) pairs that are valid and must reach the model load; every other pair must be refused.
ACCEPTED = {
    (output, k) for k in VALUES for output in ("cache_dir", "save", "save_model", "offload_dir")} | {
    ("calib_batch_size", "zero"), ("calib_batch_size", "huge"), ("seed", "zero"), ("seed", "huge"),
    ("neuronrank_max_classes", "zero"), ("neuronrank_max_classes", "huge"), ("eval_batch_size", "huge"),
    ("zs_batch_size", "huge"), ("sparsity_ratio", "zero"), ("sel_idf_clip_min", "zero"),
    ("sel_idf_clip_max", "huge"), ("sel_spiky_clip_max", "huge"),
    # OWL/DSnoT/RIA settings of add-ons this run does not use; zero is meaningful for each (no spread, no swap,
    # refine to an exact error, no activation factor), a huge outlier multiple or threshold only turns them off.
    ("owl_m", "huge"), ("owl_lambda", "zero"), ("dsnot_cycles", "zero"), ("dsnot_threshold", "zero"),
    ("dsnot_threshold", "huge"), ("ria_alpha", "zero"),
    # Exponents of methods this run does not use (wanda); negative ones are meaningful (they invert a factor).
    ("sel_idf_exp", "zero"), ("sel_spiky_exp", "zero"), ("nr_exp", "zero"),
    ("sel_idf_exp", "negative"), ("sel_spiky_exp", "negative"),
    # ADMM (--reconstruct) and depth-ramp settings of add-ons this run does not use: no damping and a zero step
    # (uniform ratios) are meaningful, and a huge penalty rho only keeps the weights at the masked original.
    ("admm_damp", "zero"), ("admm_rho", "huge"), ("ramp_beta", "zero"),
}


class Loaded(Exception):
    """Raised instead of loading the model: the run got past every check."""


def _fail_load(*args, **kwargs):
    raise Loaded


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One tiny model folder and one data folder for the whole module (nothing here writes to them)."""
    root = tmp_path_factory.mktemp("fuzz")
    model_dir = save_model(make_tiny_model("llama"), make_tokenizer(), root / "tiny")
    data = root / "data"
    make_data(data)
    return {"root": root, "model": model_dir, "data": data}


def make_data(root: Path) -> None:
    """The conftest data layout (WikiText-2 three splits, one C4 file)."""
    from conftest import fabricate_text

    (root / "wikitext-2-raw").mkdir(parents=True)
    for split, seed in (("test", 1), ("valid", 2), ("train", 3)):
        lines = [" \n", " = Title = \n", " \n"] + [f" {fabricate_text(40, seed * 100 + i)} . \n" for i in range(60)]
        (root / "wikitext-2-raw" / f"wiki.{split}.raw").write_text("".join(lines))
    (root / "c4").mkdir()
    with gzip.open(root / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz", "wt") as handle:
        for i in range(30):
            handle.write(json.dumps({"text": fabricate_text(20 + 10 * i, 1000 + i)}) + "\n")


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def call(entry, argv: list[str], capsys) -> tuple[int | str, list[str]]:
    """Run an entry point in-process -> (exit status or 'loaded', non-empty stderr lines)."""
    capsys.readouterr()
    try:
        code = entry([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    except Loaded:
        code = "loaded"
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_one_line(code, err: list[str], *names: str, status: int = 2) -> None:
    """One 'error: ' line naming one of names, and the exit status (2: bad input, 3: the data or the numbers)."""
    assert code == status, (code, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    assert any(name in err[0] for name in names), (names, err)


@pytest.fixture
def stub_load(monkeypatch, tmp_path):
    """main and lora_ft load no model; relative paths (--save 0) land in a fresh folder."""
    monkeypatch.setattr(main, "load_with_store", _fail_load)
    monkeypatch.setattr("lib.models.load_model", _fail_load)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def main_flags() -> list[tuple[str, str, type]]:
    """(field name, flag, kind) for every non-bool setting main.py offers."""
    import typing

    from lib.cli import _flag_type
    from lib.config import all_fields

    found = []
    for cls in (RunConfig, PruneConfig):
        for f, owner in all_fields(cls):
            kind = _flag_type(typing.get_type_hints(owner)[f.name])
            if kind is not bool:
                found.append((f.name, (f.metadata["flags"] or (f"--{f.name}",))[0], kind))
    return found


BASE = {"--nsamples": "2", "--seqlen": "32", "--eval_limit": "1"}


@pytest.mark.parametrize("kind", list(VALUES))
@pytest.mark.parametrize("name,flag,type_", main_flags(), ids=[f[0] for f in main_flags()])
def test_every_main_flag_refuses_what_cannot_be_meant(inputs, stub_load, capsys, name, flag, type_, kind):
    value = FLOAT_HUGE if (kind == "huge" and type_ is float) else VALUES[kind]
    out = stub_load / "out"
    base = {"--model": inputs["model"], "--data_dir": inputs["data"], "--save": out, **BASE, flag: value}
    before = snapshot(inputs["root"])
    code, err = call(main.main, [a for pair in base.items() for a in pair], capsys)
    if (name, kind) in ACCEPTED:
        assert code == "loaded", err
    else:
        spellings = {value, f"{float(value):g}" if type_ is float and kind != "text" else value, str(value)}
        assert_one_line(code, err, *spellings)
    assert snapshot(inputs["root"]) == before
    assert not out.exists() and not (stub_load / value).exists()


def corrupt_data(data: Path, case: str) -> str:
    """Damage one file of a data folder -> the file the error must name."""
    wiki, c4 = data / "wikitext-2-raw", data / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz"
    if case == "wikitext invalid utf-8":
        (wiki / "wiki.test.raw").write_bytes(b" the cat \xff\xfe sat\n" * 50)
    elif case == "wikitext truncated":
        (wiki / "wiki.test.raw").write_text(" the cat sat")
    elif case == "wikitext empty":
        (wiki / "wiki.test.raw").write_text("")
    elif case == "c4 truncated":
        c4.write_bytes(c4.read_bytes()[:200])
    elif case == "c4 not gzip":
        c4.write_text('{"text": "plain"}\n')
    elif case == "c4 bad json":
        with gzip.open(c4, "wt") as handle:
            handle.write('{"text": "ok"}\n{"text": \n')
    elif case == "c4 no text":
        with gzip.open(c4, "wt") as handle:
            handle.write('{"url": "u"}\n')
    elif case == "c4 empty":
        with gzip.open(c4, "wt") as handle:
            handle.write("")
    elif case == "c4 invalid utf-8":
        with gzip.open(c4, "wb") as handle:
            handle.write(b'{"text": "a \xff b"}\n')
    elif case == "wikitext2 calibration without train split":
        (wiki / "wiki.train.raw").unlink()
        return "wiki.train.raw"
    return str(wiki / "wiki.test.raw") if case.startswith("wikitext") else str(c4)


DATA_CASES = ["wikitext invalid utf-8", "wikitext truncated", "wikitext empty", "c4 truncated", "c4 not gzip",
              "c4 bad json", "c4 no text", "c4 empty", "c4 invalid utf-8", "wikitext2 calibration without train split"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_damaged_data_is_named_before_the_model_loads(inputs, stub_load, capsys, case):
    data = stub_load / "data"
    shutil.copytree(inputs["data"], data)
    named = corrupt_data(data, case)
    extra = ["--calib_dataset", "wikitext2"] if "calibration" in case else []
    code, err = call(main.main, ["--model", inputs["model"], "--data_dir", data, *BASE_ARGS, *extra,
                                 "--save", stub_load / "out"], capsys)
    assert_one_line(code, err, named, status=3)  # the data failed, not the flags
    assert not (stub_load / "out").exists()


BASE_ARGS = [a for pair in BASE.items() for a in pair]


def damage_model(root: Path, model: Path, case: str) -> Path:
    """A damaged model spec in root -> the path to pass as --model."""
    if case == "empty folder":
        (root / "empty").mkdir()
        return root / "empty"
    if case == "text file named .gguf":
        (root / "model.gguf").write_text("not a model")
        return root / "model.gguf"
    if case == "truncated gguf":
        (root / "short.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)
        return root / "short.gguf"
    copy = root / "copy"
    shutil.copytree(model, copy)
    if case == "unknown model_type":
        (copy / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    elif case == "config.json not JSON":
        (copy / "config.json").write_text("{ not json")
    elif case == "truncated model.safetensors":
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "no weights":
        (copy / "model.safetensors").unlink()
    return copy


MODEL_CASES = ["empty folder", "text file named .gguf", "truncated gguf", "unknown model_type",
               "config.json not JSON", "truncated model.safetensors", "no weights"]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_damaged_model_is_named_before_it_loads(inputs, stub_load, capsys, case):
    spec = damage_model(stub_load, inputs["model"], case)
    code, err = call(main.main, ["--model", spec, "--data_dir", inputs["data"], *BASE_ARGS], capsys)
    assert_one_line(code, err, str(spec), "no_such_model")


def output_case(root: Path, case: str) -> tuple[list[str], str]:
    """Flags that point an output somewhere unwritable -> (argv, text the error must contain)."""
    a_file = root / "a_file"
    a_file.write_text("x")
    if case == "--save under a file":
        return ["--save", str(a_file / "out")], str(a_file / "out")
    if case == "--save_model under a file":
        return ["--save_model", str(a_file / "model")], str(a_file / "model")
    if case == "--cache_dir a file":
        return ["--cache_dir", str(a_file)], str(a_file)
    if case == "--save a file":
        return ["--save", str(a_file)], str(a_file)
    if case == "--save_model a file":
        return ["--save_model", str(a_file)], str(a_file)
    busy = root / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    return ["--save_model", str(busy)], str(busy)


OUTPUT_CASES = ["--save under a file", "--save_model under a file", "--cache_dir a file", "--save a file",
                "--save_model a file", "--save_model a folder of other files"]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_unwritable_outputs_are_refused_before_the_model_loads(inputs, stub_load, capsys, case):
    argv, named = output_case(stub_load, case)
    before = snapshot(stub_load)
    code, err = call(main.main, ["--model", inputs["model"], "--data_dir", inputs["data"], *BASE_ARGS, *argv], capsys)
    assert_one_line(code, err, named)
    assert snapshot(stub_load) == before


OTHER_CASES = [
    (["--prune_method", "sparsegpt", "--percdamp", "0"], "percdamp 0.0 must be in (0, 1]"),
    (["--percdamp", "1e30"], "percdamp 1e+30"),
    (["--eval_zero_shot", "--tasks", ","], "tasks ',' names no task"),
    (["--tasks", "piqa"], "--tasks piqa has no effect without --eval_zero_shot"),
    (["--zs_limit", "5"], "--zs_limit 5 has no effect"),
    (["--eval_limit", "1000000000"], "eval_limit 1000000000 exceeds the"),
    (["--nsamples", "1000000000"], "nsamples 1000000000 exceeds the"),
    (["--blocksize", "1000000000"], "blocksize 1000000000 exceeds the widest linear"),
    (["--sparsity_type", "02:04"], "sparsity_type '02:04' is not understood"),
    (["--seed", "-1"], "seed -1 must be >= 0"),
    (["--seqlen", "200", "--eval_limit", "13"], "eval_limit 13 exceeds the 12 windows"),
    (["--reconstruct", "admn"], "unknown reconstruct 'admn' (did you mean 'admm'?)"),
    (["--reconstruct", "admm_gradual", "--admm_prune_steps", "30"],
     "admm_prune_steps 30 must be at most admm_iterations 20"),
    (["--prune_method", "sparsegpt", "--reconstruct", "admm"], "'sparsegpt' reconstructs the weights itself"),
    (["--reconstruct", "admm_gradual", "--refine", "dsnot"], "admm_gradual chooses the mask itself"),
    # The tiny model has 2 decoder layers: beta <= min(2 * 0.5, 2 * 0.5) / 1, strict on the 1 - S side.
    (["--layer_ratios", "depth_ramp", "--ramp_beta", "1"], "--ramp_beta: depth-ramp beta 1.0 is outside [0, 1)"),
    (["--layer_ratios", "depth_ramp", "--sparsity_type", "2:4"], "--layer_ratios depth_ramp gives each layer"),
]


@pytest.mark.parametrize("extra,message", OTHER_CASES, ids=[" ".join(c[0]) for c in OTHER_CASES])
def test_values_that_cannot_be_meant_are_refused_with_the_range(inputs, stub_load, capsys, extra, message):
    argv = {"--model": inputs["model"], "--data_dir": inputs["data"], **BASE}
    argv.update(dict(zip(extra[::2], extra[1::2])) if "--eval_zero_shot" not in extra else {})
    flat = [a for pair in argv.items() for a in pair] + (extra if "--eval_zero_shot" in extra else [])
    code, err = call(main.main, flat, capsys)
    assert_one_line(code, err, message)


# lora_ft: every flag of both scripts.

LORA_FLOATS = {"learning_rate", "num_train_epochs", "lora_dropout", "weight_decay"}
FINETUNE_ACCEPTED = {("output_dir", k) for k in VALUES} | {("cache_dir", k) for k in VALUES} | {
    ("max_train_samples", "huge"), ("max_steps", "huge"), ("per_device_train_batch_size", "huge"),
    ("logging_steps", "zero"), ("logging_steps", "huge"), ("seed", "zero"), ("seed", "huge"),
    ("lora_alpha", "huge"), ("lora_dropout", "zero"), ("weight_decay", "zero"),
}
EVALUATE_ACCEPTED = {("cache_dir", k) for k in VALUES} | {
    ("eval_batch_size", "huge"), ("zs_batch_size", "huge"), ("output", "zero"), ("output", "negative"),
    ("output", "huge"), ("output", "nan"), ("output", "inf"), ("output", "text"),
}


@pytest.fixture(scope="module")
def lora_inputs(inputs) -> dict[str, Path]:
    """A LoRA adapter of the tiny model, saved once."""
    from lora_ft.lora_utils import LoraSettings, attach_lora

    adapter = inputs["root"] / "adapter"
    attach_lora(make_tiny_model("llama"), LoraSettings()).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(inputs["model"])
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return {**inputs, "adapter": adapter}


def lora_flags(parser) -> list[tuple[str, str]]:
    return [(a.dest, a.option_strings[0]) for a in parser._actions
            if a.option_strings and a.nargs != 0 and a.dest not in ("help",)]


def _finetune_flags():
    from lora_ft import finetune_lm
    return lora_flags(finetune_lm.build_parser())


def _evaluate_flags():
    from lora_ft import evaluate_ppl
    return lora_flags(evaluate_ppl.build_parser())


@pytest.mark.parametrize("kind", list(VALUES))
@pytest.mark.parametrize("name,flag", _finetune_flags(), ids=[f[0] for f in _finetune_flags()])
def test_every_finetune_flag_refuses_what_cannot_be_meant(lora_inputs, stub_load, capsys, name, flag, kind):
    from lora_ft import finetune_lm

    value = FLOAT_HUGE if (kind == "huge" and name in LORA_FLOATS) else VALUES[kind]
    argv = {"--model": lora_inputs["model"], "--data_dir": lora_inputs["data"], "--output_dir": stub_load / "adapter",
            "--max_train_samples": "4", "--block_size": "32", "--max_steps": "2", flag: value}
    before = snapshot(lora_inputs["root"])
    code, err = call(lambda a: run_cli(lambda: finetune_lm.main(a)), [x for p in argv.items() for x in p], capsys)
    if (name, kind) in FINETUNE_ACCEPTED:
        assert code == "loaded", err
    else:
        spellings = {value, f"{float(value):g}" if name in LORA_FLOATS and kind != "text" else value}
        assert_one_line(code, err, *spellings)
    assert snapshot(lora_inputs["root"]) == before and not (stub_load / "adapter").exists()


@pytest.mark.parametrize("kind", list(VALUES))
@pytest.mark.parametrize("name,flag", _evaluate_flags(), ids=[f[0] for f in _evaluate_flags()])
def test_every_evaluate_flag_refuses_what_cannot_be_meant(lora_inputs, stub_load, capsys, name, flag, kind):
    from lora_ft import evaluate_ppl

    value = VALUES[kind]
    argv = {"--lora_weights": lora_inputs["adapter"], "--data_dir": lora_inputs["data"], "--seqlen": "32",
            "--eval_limit": "2", "--output": stub_load / "eval.json", flag: value}
    before = snapshot(lora_inputs["root"])
    code, err = call(lambda a: run_cli(lambda: evaluate_ppl.main(a)), [x for p in argv.items() for x in p], capsys)
    if (name, kind) in EVALUATE_ACCEPTED:
        assert code == "loaded", err
    else:
        assert_one_line(code, err, value)
    assert snapshot(lora_inputs["root"]) == before and not (stub_load / "eval.json").exists()


# Post-load tier: every flag of main.py once, with a valid value other than its default, in real runs on a tiny
# model (nothing stubbed), so what happens after loading (pruning, evaluation, saving, onloading) is reached too.
# Each run must finish (exit 0) with strict JSON that records the settings, no traceback and no leftovers.

POST_LOAD_RUNS = {
    "sparsegpt 2:4 bf16": ["--prune_method", "sparsegpt", "--sparsity_type", "2:4", "--blocksize", "32",
                           "--percdamp", "0.05", "--calib_batch_size", "1", "--seed", "3", "--dtype", "bfloat16",
                           "--protocol", "experiment"],
    "selectivity": ["--prune_method", "wanda_select", "--sparsity_ratio", "0.3", "--sel_tau_percentile", "0.5",
                    "--sel_top_quantile", "0.8", "--sel_idf_clip_max", "5", "--sel_idf_clip_min", "0.1",
                    "--sel_spiky_clip_max", "5", "--sel_idf_exp", "0.5", "--sel_spiky_exp", "2"],
    "neuronrank variant": ["--prune_method", "neuronrank_fisher", "--neuronrank_max_classes", "8", "--nr_exp",
                           "0.5", "--use_variant", "--sparsity_ratio", "0.4"],
    "neuronrank neurons": ["--prune_method", "neuronrank", "--nr_granularity", "neuron", "--shrink", "--debug"],
    "owl + dsnot": ["--layer_ratios", "owl", "--owl_m", "3", "--owl_lambda", "0.05", "--owl_score", "method",
                    "--refine", "dsnot", "--dsnot_cycles", "5", "--dsnot_threshold", "0.05", "--dsnot_same_sign",
                    "--dsnot_skip", "none"],
    "ria permuted": ["--prune_method", "ria", "--ria_alpha", "1", "--ria_group", "row", "--sparsity_type", "2:4",
                     "--permute"],
    "disk + outputs": ["--offload", "disk", "--offload_dir", "OUT/offload", "--save_model", "OUT/model",
                       "--save_stats", "--eval_split", "validation", "--calib_dataset", "wikitext2",
                       "--eval_batch_size", "2", "--cache_dir", "OUT/cache"],
    "cpu + longest windows": ["--offload", "cpu", "--no_dense_eval", "--seqlen_max"],
    "device_map": ["--device_map", "auto", "--offload", "none"],
    "zero-shot": ["--eval_zero_shot", "--tasks", "tinyqa", "--zs_limit", "2", "--zs_batch_size", "2"],
    "text files + bos": ["--bos", "always", "--calib_dataset", "DATA/c4/c4-en-train.00000-of-01024.first1000.jsonl.gz",
                         "--calib_field", "text", "--eval_dataset",
                         "wikitext2,DATA/c4/c4-en-train.00000-of-01024.first1000.jsonl.gz", "--eval_field", "text"],
    "admm gradual + depth ramp": ["--prune_method", "wanda_spiky", "--reconstruct", "admm_gradual", "--admm_iterations",
                                  "4", "--admm_prune_steps", "3", "--admm_damp", "0.05", "--admm_rho", "2",
                                  "--layer_ratios", "depth_ramp", "--ramp_beta", "0.1", "--sparsity_ratio", "0.6"],
}
POST_LOAD_BASE = {"--nsamples": "2", "--seqlen": "32", "--eval_limit": "2"}


@pytest.fixture(scope="module")
def post_load_data(inputs) -> Path:
    """The module's data with a made-up local zero-shot task (a copy: the shared inputs stay untouched)."""
    from _zs_helpers import write_local_task

    data = inputs["root"] / "data-with-tasks"
    shutil.copytree(inputs["data"], data)
    write_local_task(data)
    return data


def test_post_load_runs_cover_every_flag():
    given = {a for argv in POST_LOAD_RUNS.values() for a in argv if a.startswith("--")} | set(POST_LOAD_BASE)
    given |= {"--model", "--data_dir", "--save"}
    missed = [a.option_strings for a in main.build_parser()._actions
              if a.option_strings and a.dest != "help" and not set(a.option_strings) & given]
    assert missed == []


@pytest.mark.parametrize("label", list(POST_LOAD_RUNS))
def test_every_flag_after_loading_finishes_and_records_itself(inputs, post_load_data, tmp_path, monkeypatch, capsys,
                                                              label):
    import tempfile

    from lib.runinfo import MARKER

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    extra = [a.replace("OUT", str(tmp_path)).replace("DATA", str(post_load_data)) for a in POST_LOAD_RUNS[label]]
    base = {} if "--seqlen_max" in extra else POST_LOAD_BASE
    argv = ["--model", inputs["model"], "--data_dir", post_load_data, "--save", tmp_path / "out",
            *[a for pair in base.items() for a in pair], *extra]
    code, err = call(main.main, argv, capsys)
    assert code == 0, err
    assert not [line for line in err if "Traceback" in line or line.startswith("error")]
    results = json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=lambda c: 1 / 0)
    flags = dict(zip(extra, extra[1:] + [""]))
    for name, value in results["config"].items():
        flag = f"--{name}"
        if flag in flags:
            recorded = value if not isinstance(value, bool) else True
            wanted = flags[flag] if not isinstance(value, bool) else True
            assert str(recorded) == wanted or float(recorded) == float(wanted), (name, recorded, wanted)
    if "--eval_zero_shot" in extra:
        assert results["zero_shot"]["tinyqa"]["n"] == 2
    if "--save_model" in extra:
        assert (tmp_path / "model" / MARKER).is_file() and (tmp_path / "model" / "config.json").is_file()
    leftovers = [p for p in tmp_path.rglob(".*") if p.name != MARKER]
    assert leftovers == [] and list((tmp_path / "tmp").iterdir()) == []


LORA_POST_LOAD = {
    "finetune wikitext2": ["--dataset", "wikitext2", "--max_train_samples", "4", "--block_size", "16",
                           "--max_steps", "2", "--learning_rate", "1e-3", "--per_device_train_batch_size", "2",
                           "--gradient_accumulation_steps", "2", "--logging_steps", "1", "--seed", "1",
                           "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--lora_target_modules",
                           "q_proj,v_proj,up_proj", "--dtype", "float32", "--cache_dir", "OUT/cache",
                           "--weight_decay", "0.01"],
    "finetune train_file": ["--train_file", "OUT/train.txt", "--num_train_epochs", "1", "--block_size", "16",
                            "--max_train_samples", "2", "--bos", "always"],
}
EVALUATE_POST_LOAD = {
    "merge masked": ["--seqlen", "32", "--eval_limit", "2", "--eval_batch_size", "2", "--skip_base", "--bos", "never",
                     "--merge_masked", "--save_merged", "OUT/merged", "--dtype", "float32", "--cache_dir",
                     "OUT/cache", "--output", "OUT/eval.json"],
    "merge + zero-shot": ["--model", "MODEL", "--seqlen", "32", "--eval_limit", "1", "--merge", "--eval_zero_shot",
                          "--tasks", "tinyqa", "--zs_limit", "2", "--zs_batch_size", "2"],
}


def test_lora_post_load_runs_cover_every_flag():
    from lora_ft import evaluate_ppl, finetune_lm

    for parser, runs, implied in ((finetune_lm.build_parser(), LORA_POST_LOAD, {"--model", "--output_dir",
                                                                                "--data_dir"}),
                                  (evaluate_ppl.build_parser(), EVALUATE_POST_LOAD, {"--lora_weights",
                                                                                     "--data_dir"})):
        given = {a for argv in runs.values() for a in argv if a.startswith("--")} | implied
        assert {a.option_strings[0] for a in parser._actions if a.option_strings} - {"-h"} - given == set()


def test_every_lora_flag_after_loading_finishes(inputs, post_load_data, tmp_path, monkeypatch, capsys):
    from lora_ft import evaluate_ppl, finetune_lm

    from lib.runinfo import MARKER

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text("the cat sat on the mat . " * 40 + "\n\n" + "a big red sun . " * 40)
    for label, extra in LORA_POST_LOAD.items():
        argv = ["--model", inputs["model"], "--data_dir", post_load_data, "--output_dir", tmp_path / label,
                *[a.replace("OUT", str(tmp_path)) for a in extra]]
        code, err = call(lambda a: run_cli(lambda: finetune_lm.main(a)), argv, capsys)
        assert code == 0, (label, err)
        assert (tmp_path / label / "train_log.json").is_file() and (tmp_path / label / MARKER).is_file()
    adapter = tmp_path / "finetune wikitext2"
    for label, extra in EVALUATE_POST_LOAD.items():
        argv = ["--lora_weights", adapter, "--data_dir", post_load_data,
                *[a.replace("OUT", str(tmp_path)).replace("MODEL", str(inputs["model"])) for a in extra]]
        code, err = call(lambda a: run_cli(lambda: evaluate_ppl.main(a)), argv, capsys)
        assert code == 0, (label, err)
    assert (tmp_path / "merged" / MARKER).is_file()
    assert json.loads((adapter / "eval_results.json").read_text())["zero_shot"]["tinyqa"]["n"] == 2
    assert "ppl_merged_masked" in json.loads((tmp_path / "eval.json").read_text())
    assert [p for p in tmp_path.rglob(".*") if p.name != MARKER] == []


# ---------------------------------------------------------------- the experiment runner's flags


RUNNER_NUMBERS = {"--workers": 1, "--time": 1, "--gpus_per_task": 0, "--cpus_per_task": 1, "--mem_gb": 0.001,
                  "--array_parallelism": 1, "--seeds": 0}  # flag -> least accepted value


@pytest.fixture(scope="module")
def runner_grid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "g.toml"
    path.write_text(f'protocol = "quick"\nmodels = ["m"]\nseeds = [0]\nresults_dir = "{path.parent / "out"}"\n'
                    '[[block]]\naxes = { prune_method = ["wanda"] }\n')
    return path


def runner_flags() -> list[str]:
    import experiment

    run = experiment.build_parser()._subparsers._group_actions[0].choices["run"]
    return sorted(a.option_strings[-1] for a in run._actions if a.option_strings and a.nargs != 0
                  and a.option_strings[-1] != "--help")


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize("flag", runner_flags())
def test_every_runner_flag_with_odd_values(runner_grid, capsys, flag, kind):
    import experiment

    value = VALUES[kind]
    try:
        status = experiment.main(["run", str(runner_grid), flag, value, "--dry_run"])
    except SystemExit as done:  # argparse's one-line error
        status = done.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and status in (0, 2), (status, err)
    if status == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    if flag in RUNNER_NUMBERS:
        number = float(value) if kind != "text" else None
        valid = number is not None and math.isfinite(number) and number >= RUNNER_NUMBERS[flag]
        assert status == (0 if valid else 2), (flag, value, err)
    assert not (runner_grid.parent / "out").exists()  # a dry run writes nothing


def text_file_case(root: Path, case: str) -> tuple[list[str], str]:
    """A damaged or unusable --calib_dataset / --eval_dataset file -> (flags, text the error must name)."""
    role, _, damage = case.partition(" ")
    flag = "--calib_dataset" if role == "calib" else "--eval_dataset"
    if damage == "missing .txt":
        return [flag, str(root / "nowhere.txt")], str(root / "nowhere.txt")
    path = root / {"blank .txt": "d.txt", "bad .jsonl": "d.jsonl", "no field .jsonl.gz": "d.jsonl.gz",
                   "not parquet": "d.parquet", "short .txt": "short.txt", "no column .parquet": "c.parquet"}[damage]
    if damage == "blank .txt":
        path.write_text("\n \n\n")
    elif damage == "bad .jsonl":
        path.write_text('{"text": "the cat"}\n{"text": \n')
    elif damage == "no field .jsonl.gz":
        with gzip.open(path, "wt") as handle:
            handle.write('{"content": "the cat sat"}\n')
    elif damage == "not parquet":
        path.write_text("the cat sat")
    elif damage == "short .txt":
        path.write_text("the cat sat on the mat\n\na dog ran\n")
    elif damage == "no column .parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"content": ["the cat sat"] * 3}), path)
    return [flag, str(path)], str(path)


TEXT_FILE_CASES = [f"{role} {damage}" for role in ("calib", "eval") for damage in (
    "missing .txt", "blank .txt", "bad .jsonl", "no field .jsonl.gz", "not parquet", "short .txt",
    "no column .parquet")]


@pytest.mark.parametrize("case", TEXT_FILE_CASES)
def test_unusable_text_files_are_named_before_the_model_loads(inputs, stub_load, capsys, case):
    argv, named = text_file_case(stub_load, case)
    code, err = call(main.main, ["--model", inputs["model"], "--data_dir", inputs["data"], *BASE_ARGS, *argv,
                                 "--save", stub_load / "out"], capsys)
    # A path that is no file or a column it lacks is bad input (2); a damaged, empty or short file a data failure (3).
    assert_one_line(code, err, named, status=2 if case.endswith(("missing .txt", "no column .parquet")) else 3)
    assert not (stub_load / "out").exists()


SPEC_CASES = [
    (["--calib_dataset", "ptb"], "calib_dataset 'ptb' is not one of"),
    (["--calib_dataset", "notes.csv"], "calib_dataset 'notes.csv' is not one of"),
    (["--calib_dataset", "hf:"], "calib_dataset 'hf:' is not one of"),
    (["--eval_dataset", "wikitext2,ptb"], "eval_dataset 'ptb' is not one of"),
    (["--eval_dataset", ","], "eval_dataset ',' names no dataset"),
    (["--calib_field", "content"], "calib_field 'content' has no effect"),
    (["--eval_dataset", "c4", "--eval_field", "content"], "eval_field 'content' has no effect"),
    (["--bos", "sometimes"], "bos 'sometimes' is not one of"),
]


@pytest.mark.parametrize("extra,message", SPEC_CASES, ids=[" ".join(c[0]) for c in SPEC_CASES])
def test_text_specs_that_cannot_be_meant_are_refused(inputs, stub_load, capsys, extra, message):
    code, err = call(main.main, ["--model", inputs["model"], "--data_dir", inputs["data"], *BASE_ARGS, *extra],
                     capsys)
    assert_one_line(code, err, message)
