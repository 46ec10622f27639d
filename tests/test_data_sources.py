"""Calibration and evaluation text of the user's choosing: local .txt / .jsonl / .jsonl.gz / .parquet files and
Hugging Face datasets give the same documents and the same window draw as C4; --eval_dataset adds perplexities
(C4 as SparseGPT reports it) and results.json records every source and its content hash."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import main
from conftest import direct_ppl, fabricate_text, make_tiny_model, make_tokenizer
from lib.data import C4_HELDOUT, c4_file, calibration_windows, load_calibration_texts, load_c4_texts, load_eval_text, \
    read_documents, text_sha256

DOCS = [fabricate_text(20 + 7 * i, 500 + i) for i in range(12)]


def write_all_formats(folder, docs: list[str], field: str = "text") -> dict[str, object]:
    """The same documents as .txt, .jsonl, .jsonl.gz and .parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"docs{ext}" for ext in (".txt", ".jsonl", ".jsonl.gz", ".parquet")}
    paths[".txt"].write_text("\n\n".join(docs) + "\n")
    rows = "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))
    paths[".jsonl"].write_text(rows)
    with gzip.open(paths[".jsonl.gz"], "wt") as handle:
        handle.write(rows)
    pq.write_table(pa.table({field: docs}), paths[".parquet"])
    return paths


def test_every_file_format_gives_the_same_documents_and_the_c4_draw(tmp_path, data_dir):
    tokenizer = make_tokenizer()
    c4_docs = load_c4_texts(data_dir)
    expected = calibration_windows("c4", c4_docs, tokenizer, 8, 5, 16)
    for ext, path in write_all_formats(tmp_path, c4_docs).items():
        assert read_documents(path) == [d.strip() for d in c4_docs], ext
        windows = calibration_windows(str(path), load_calibration_texts(str(path), None), tokenizer, 8, 5, 16)
        assert torch.equal(windows, expected), ext  # same seed, same documents: the same windows


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\nsame document\n\n  \nsecond\n\n\n\nthird\n")
    assert read_documents(path) == ["first line\nsame document", "second", "third"]


def test_calib_field_picks_the_field_and_results_record_source_and_hash(tiny_model_dir, data_dir, tmp_path):
    paths = write_all_formats(tmp_path / "texts", DOCS, field="content")
    model = tiny_model_dir("llama")
    hashes = {}
    for ext in (".jsonl", ".parquet"):
        out = tmp_path / f"out{ext}"
        assert main.main(["--model", str(model), "--calib_dataset", str(paths[ext]), "--calib_field", "content",
                          "--nsamples", "4", "--seqlen", "16", "--eval_limit", "1", "--data_dir", str(data_dir),
                          "--save", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["calib_dataset"] == results["calib_source"] == str(paths[ext])
        hashes[ext] = results["calib_sha256"]
    assert hashes[".jsonl"] == hashes[".parquet"] == text_sha256(DOCS)  # same content, same hash
    assert text_sha256(DOCS[:-1]) != text_sha256(DOCS) != text_sha256(["".join(DOCS)])


def test_hub_dataset_spec_reaches_load_dataset(monkeypatch):
    """hf:NAME[:CONFIG][@SPLIT]: name, config and split go to datasets.load_dataset, the column is the field."""
    import datasets

    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"question": DOCS, "answer": ["x"] * len(DOCS)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_calibration_texts("hf:openai/gsm8k:main", None, "question") == DOCS
    assert load_eval_text("hf:some/corpus@validation", "test", None, "question").texts == DOCS
    assert load_eval_text("hf:some/corpus", "test", None, "question").source == "hf:some/corpus"
    assert calls == [("openai/gsm8k", "main", "train"), ("some/corpus", None, "validation"),
                     ("some/corpus", None, "test")]
    with pytest.raises(main.ConfigError, match="has no column 'text'; its columns are"):
        load_calibration_texts("hf:openai/gsm8k", None, "text")


def test_eval_datasets_each_reported_and_c4_as_sparsegpt(tiny_model_dir, data_dir, tmp_path):
    heldout = [fabricate_text(30 + i, 900 + i) for i in range(40)]
    with gzip.open(data_dir / "c4" / C4_HELDOUT, "wt") as handle:
        handle.writelines(json.dumps({"text": d}) + "\n" for d in heldout)
    own = write_all_formats(tmp_path / "texts", DOCS)[".txt"]
    out = tmp_path / "out"
    assert main.main(["--model", str(tiny_model_dir("llama")), "--prune_method", "magnitude", "--seqlen", "16",
                      "--eval_limit", "3", "--eval_dataset", f"wikitext2,c4,{own}", "--data_dir", str(data_dir),
                      "--save", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    evals = results["eval_datasets"]
    assert list(evals) == ["wikitext2", "c4", str(own)]
    assert (results["ppl_dense"], results["ppl_pruned"]) == (evals["wikitext2"]["ppl_dense"],
                                                             evals["wikitext2"]["ppl_pruned"])
    assert evals["c4"]["source"] == str(data_dir / "c4" / C4_HELDOUT) and evals["c4"]["sha256"] == text_sha256(heldout)
    # SparseGPT's C4 stream: the held-out documents joined with ' ', tokenised once; the calibration file is
    # never the held-out one.
    tokenizer, model = make_tokenizer(), make_tiny_model("llama")
    stream = tokenizer(" ".join(heldout)).input_ids
    assert evals["c4"]["ppl_dense"] == pytest.approx(direct_ppl(model, stream, 16, 3, None), rel=1e-5)
    stream = tokenizer("\n\n".join(DOCS)).input_ids
    assert evals[str(own)]["ppl_dense"] == pytest.approx(direct_ppl(model, stream, 16, 3, None), rel=1e-5)
    assert c4_file(data_dir).name == "c4-en-train.00000-of-01024.first1000.jsonl.gz"
    (data_dir / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz").unlink()
    assert c4_file(data_dir) is None  # calibration falls back to another C4 file, never the held-out one


def test_c4_evaluation_is_capped_at_sparsegpts_256_windows(data_dir):
    heldout = [fabricate_text(400, 7000 + i) for i in range(30)]
    with gzip.open(data_dir / "c4" / C4_HELDOUT, "wt") as handle:
        handle.writelines(json.dumps({"text": d}) + "\n" for d in heldout)
    text = load_eval_text("c4", "test", data_dir)
    assert text.ids(make_tokenizer(), False, 8).shape == (1, 256 * 8)


def test_c4_evaluation_without_the_heldout_file_names_where_it_looked(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    # data missing everywhere: a failed run (exit 3), not bad input
    assert main.main(["--model", str(tiny_model_dir("llama")), "--seqlen", "16", "--eval_dataset", "c4",
                      "--data_dir", str(data_dir), "--save", str(out)]) == 3
    err = capsys.readouterr().err
    assert "C4 evaluation text not found" in err and C4_HELDOUT in err and not out.exists()
