"""Calibration windows (C4, WikiText-2) and the WikiText-2 evaluation stream, local files first, then the hub.

Local layout (``--data_dir`` or ``$WANDA_DATA_DIR``, e.g. ../shared/data):
    wikitext-2-raw/wiki.{train,valid,test}.raw
    c4/c4-en-train.00000-of-01024.first1000.jsonl.gz   (preferred; else the first c4/*.jsonl.gz by name)
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.config import HUB_PREFIX, ConfigError, parse_hub_spec
from lib.errors import RunError

logger = logging.getLogger(__name__)

WIKITEXT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
C4_PREFERRED = "c4-en-train.00000-of-01024.first1000.jsonl.gz"
# C4 perplexity (--eval_dataset c4) as SparseGPT reports it: the first 1100 documents of the validation shard joined
# with ' ', at most 256 windows. Locally: 1000 held-out C4 'en' documents (not SparseGPT's shard; see README).
C4_HELDOUT = "c4-en-olmo-test-fixture.1000.jsonl.gz"
C4_VALIDATION_SHARD = "en/c4-validation.00000-of-00008.json.gz"
C4_EVAL_DOCUMENTS, C4_EVAL_WINDOWS = 1100, 256


class DataError(RunError):
    """A data file is missing or damaged; the message names the file, or every place that was tried."""


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The local data folder: the flag, else $WANDA_DATA_DIR, else None (hub only)."""
    chosen = data_dir or os.environ.get("WANDA_DATA_DIR")
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data_dir '{chosen}' is not a folder")
    return path


def _hub_error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def read_text_file(path: Path) -> str:
    """A UTF-8 text file's content; undecodable or unreadable files are a DataError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data file '{path}' is not UTF-8 text (byte {err.start}: {err.reason}); replace it "
                        "with an intact copy") from None
    except OSError as err:
        raise DataError(f"data file '{path}' cannot be read ({err.strerror or err})") from None


def read_jsonl(path: Path, field: str = "text", what: str = "JSON-lines file") -> list[str]:
    """The `field` of every row of a .jsonl or .jsonl.gz file; a damaged file is a DataError naming it and the line."""
    texts: list[str] = []
    lineno = 0
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise DataError(f"{what} '{path}' line {lineno} has no string '{field}' field; each line must be "
                                    f'a JSON object like {{"{field}": "..."}}')
                texts.append(row[field])
    except json.JSONDecodeError as err:
        raise DataError(f"{what} '{path}' line {lineno} is not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{what} '{path}' line {lineno + 1} is not UTF-8 text") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        damage = "is truncated" if isinstance(err, EOFError) else "is not a valid gzip file"
        raise DataError(f"{what} '{path}' {damage} (after {lineno} lines: {err}); replace it with an intact copy") \
            from None
    except OSError as err:
        raise DataError(f"{what} '{path}' cannot be read ({err.strerror or err})") from None
    return check_documents(texts, f"{what} '{path}'", f"no row with a non-empty '{field}'")


def read_c4_file(path: Path) -> list[str]:
    """The 'text' of every row of a C4 .jsonl.gz file (read_jsonl)."""
    return read_jsonl(path, "text", "C4 file")


def check_documents(texts: list[str], what: str, detail: str) -> list[str]:
    """texts unchanged, or a DataError when none holds any text."""
    if not any(text.strip() for text in texts):
        raise DataError(f"{what} holds no text ({detail})")
    return texts


def read_parquet(path: Path, column: str) -> list[str]:
    """The string column `column` of a .parquet file, one document per row (pyarrow reads only that column)."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        values = pq.read_table(path, columns=[column]).column(column).to_pylist() if column in names else None
    except (OSError, pyarrow.ArrowException) as err:  # not parquet, truncated, unreadable
        raise DataError(f"parquet file '{path}' cannot be read ({_hub_error(err)})") from None
    if values is None:
        raise ConfigError(f"parquet file '{path}' has no column '{column}'; its columns are {names} (choose one "
                          "with --calib_field / --eval_field)")
    if not all(isinstance(v, str) or v is None for v in values):
        raise DataError(f"parquet file '{path}' column '{column}' does not hold text")
    return check_documents([v for v in values if v], f"parquet file '{path}'", f"column '{column}' is empty")


def read_documents(path: Path, field: str = "text") -> list[str]:
    """The documents of a local text file: .txt (separated by blank lines), .jsonl/.jsonl.gz (`field` of each
    row) or .parquet (column `field`). A path that is no file, or a column it lacks, is bad input (ConfigError);
    an unreadable, damaged or empty file a DataError naming it."""
    if not path.is_file():
        raise ConfigError(f"data file '{path}' does not exist (or is not a file)")  # a path the user named
    name = path.name.lower()
    if name.endswith(".txt"):
        documents = [d.strip() for d in re.split(r"\n[ \t]*\n", read_text_file(path))]
        return check_documents([d for d in documents if d], f"text file '{path}'", "only blank lines")
    if name.endswith(".parquet"):
        return read_parquet(path, field)
    return read_jsonl(path, field)


def hub_documents(spec: str, field: str, default_split: str) -> list[str]:
    """The `field` column of the Hugging Face dataset hf:NAME[:CONFIG][@SPLIT] (for users with a hub)."""
    name, config, split = parse_hub_spec(spec, default_split)
    try:
        from datasets import load_dataset

        data = load_dataset(name, config, split=split)
    except Exception as err:  # the hub raises many types when offline or the name is wrong
        raise DataError(f"dataset '{spec}' could not be loaded from the hub ({_hub_error(err)})") from None
    if field not in data.column_names:
        raise ConfigError(f"dataset '{spec}' has no column '{field}'; its columns are {data.column_names}")
    return check_documents([t for t in data[field] if isinstance(t, str)], f"dataset '{spec}'",
                           f"column '{field}' is empty")


def text_sha256(texts: list[str]) -> str:
    """A content hash of documents as read (for results.json): sha256 over each UTF-8 document and a NUL."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def wikitext2_file(split: str, data_dir: Path | None) -> Path | None:
    """The local file a WikiText-2 split is read from, or None when it comes from the hub (for messages)."""
    path = None if data_dir is None else data_dir / "wikitext-2-raw" / WIKITEXT_FILES.get(split, "")
    return path if path is not None and path.is_file() else None


def c4_file(data_dir: Path | None) -> Path | None:
    """The local C4 file calibration is read from (never the held-out evaluation file), or None: the hub."""
    if data_dir is None:
        return None
    folder = data_dir / "c4"
    if (folder / C4_PREFERRED).is_file():
        return folder / C4_PREFERRED
    files = [f for f in sorted(folder.glob("*.jsonl.gz")) if f.name != C4_HELDOUT]
    return files[0] if files else None


def load_wikitext2_rows(split: str, data_dir: Path | None) -> list[str]:
    """WikiText-2 raw rows as Hugging Face `datasets` gives them: lines with '\\n', blank lines as ''."""
    if split not in WIKITEXT_FILES:
        raise ConfigError(f"wikitext2 split '{split}' is not one of {sorted(WIKITEXT_FILES)}")
    tried = []
    if data_dir is not None:
        path = data_dir / "wikitext-2-raw" / WIKITEXT_FILES[split]
        if path.is_file():
            lines = read_text_file(path).splitlines(keepends=True)
            return ["" if not line.strip() else line for line in lines]
        tried.append(str(path))
    try:
        from datasets import load_dataset

        return list(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
    except Exception as err:  # the hub raises many types when offline
        tried.append(f"hub wikitext/wikitext-2-raw-v1 ({_hub_error(err)})")
    raise DataError(f"WikiText-2 {split} split not found; looked in: {'; '.join(tried)}. "
                    "Set --data_dir or WANDA_DATA_DIR to a folder like ../shared/data")


def load_c4_texts(data_dir: Path | None) -> list[str]:
    """C4 'en' documents (text only): the local sample if present, else Wanda's hub shard."""
    tried = []
    if data_dir is not None:
        local = c4_file(data_dir)
        if local is not None:
            return read_c4_file(local)
        tried.append(f"{data_dir / 'c4'}/*.jsonl.gz (other than {C4_HELDOUT})")
    try:
        from datasets import load_dataset

        data = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
        return list(data["text"])
    except Exception as err:
        tried.append(f"hub allenai/c4 en/c4-train.00000-of-01024 ({_hub_error(err)})")
    raise DataError(f"C4 calibration data not found; looked in: {'; '.join(tried)}. "
                    "Set --data_dir or WANDA_DATA_DIR to a folder like ../shared/data")


# Model families trained with BOS at the start of every input, whose perplexity without it describes the model
# outside its training regime (Gemma3-270M, WikiText-2, 32 windows of 256 tokens: 161.33 without, 35.63 with;
# SmolLM2-135M 46.60 and 45.58; README, scripts/bos_check.py). Every other family keeps Wanda's protocol under auto.
BOS_FAMILIES = ("gemma",)


def choose_seqlen(requested: int | None, model_max: int | None, use_max: bool = False, bos: bool = False) -> int:
    """min(2048, model maximum) by default, the maximum with use_max; a request above the maximum is an error.
    With bos a window is BOS + seqlen text tokens, so the maximum for seqlen is one less."""
    limit = None if model_max is None else model_max - bos
    if use_max:
        if limit is None:
            raise ConfigError("--seqlen_max: the model's config states no maximum context; pass --seqlen")
        return limit
    if requested is None:
        return min(2048, limit or 2048)
    if limit is not None and requested > limit:
        raise ConfigError(f"seqlen {requested} exceeds the model's maximum of {model_max} positions"
                          + (" less the BOS in front of every window (--bos)" if bos else ""))
    return requested


def resolve_bos(mode: str, model_type: str, tokenizer) -> int | None:
    """The BOS id to put in front of every window (None: Wanda's windows). mode: 'auto', 'always' or 'never'.

    auto is 'always' for model types starting with one of BOS_FAMILIES (gemma, gemma2, gemma3_text, ...).
    """
    if mode == "never" or (mode == "auto" and not str(model_type).startswith(BOS_FAMILIES)):
        return None
    if tokenizer.bos_token_id is None:
        if mode == "auto":
            return None
        raise ConfigError(f"bos 'always': the tokenizer of this {model_type} model defines no BOS token; use "
                          "--bos never or auto")
    return int(tokenizer.bos_token_id)


def bos_record(bos_id: int | None, mode: str) -> dict[str, str]:
    """The results.json fields of the BOS choice: what was done ('always'/'never') and the setting that chose it."""
    return {"bos": "never" if bos_id is None else "always", "bos_setting": mode}


def token_ids(text: str, tokenizer, bos: bool) -> torch.Tensor:
    """text -> token ids [N]. bos: the text's tokens alone (a BOS is put in front of each window later);
    else as the tokenizer encodes a text (Wanda's: with its own BOS at the start, if it adds one)."""
    return tokenizer(text, return_tensors="pt", add_special_tokens=not bos).input_ids[0]


def with_bos(windows: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """windows [n, L] -> [n, 1 + L] with bos_id in front of each (unchanged for None)."""
    if bos_id is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos_id, dtype=windows.dtype), windows], dim=1)


def check_capacity(nsamples: int, starts: int, seqlen: int, source: str) -> None:
    """nsamples windows must not exceed the distinct windows (start positions) the calibration text offers.

    More than that can only repeat windows: it is never meant, and a typo like 1000000000 would otherwise
    allocate nsamples x seqlen token ids and run for hours before anything is printed.
    """
    if starts == 0:
        raise DataError(f"calibration text ({source}) has no window of seqlen+1 = {seqlen + 1} tokens; lower "
                        "--seqlen or use more text")
    if nsamples > starts:
        raise ConfigError(f"nsamples {nsamples} exceeds the {starts} distinct windows of {seqlen} tokens that the "
                          f"calibration text ({source}) can supply; use --nsamples <= {starts}")


def _windows_from_stream(ids: torch.Tensor, nsamples: int, seqlen: int, rng: random.Random,
                         source: str = "joined text") -> torch.Tensor:
    """nsamples random windows [nsamples, seqlen] from one token stream ids [N] (Wanda's wikitext2 draw)."""
    check_capacity(nsamples, max(0, ids.numel() - seqlen), seqlen, source)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s:s + seqlen] for s in starts])


def c4_windows(texts: list[str], tokenizer, nsamples: int, seed: int, seqlen: int,
               source: str = "C4", bos: bool = False) -> torch.Tensor:
    """Wanda's get_c4 draw: a random document longer than seqlen (with replacement), then a random window.

    The random calls are Wanda's, and only the drawn documents are tokenised (the hub shard has ~356k), so the
    hub shard gives Wanda's exact calibration set. Documents no longer than seqlen are re-drawn; if none is long
    enough (a small local sample at a long seqlen: known once every document has been drawn), the documents are
    joined in file order with '\\n\\n' into one stream and windows are drawn from it, with the seed afresh.
    bos: documents are tokenised without special tokens (token_ids), the windows [nsamples, seqlen] text alone.
    """
    rng = random.Random(seed)
    # A token covers at least one character (plus a BOS/EOS), so this bounds the distinct windows without
    # tokenising every document: it refuses a typo like --nsamples 1000000000 and never a possible request.
    check_capacity(nsamples, sum(max(0, len(text) + 2 - seqlen) for text in texts), seqlen, source)
    tokenized: dict[int, torch.Tensor] = {}
    longest = 0
    samples = []
    for _ in range(nsamples):
        while True:
            i = rng.randint(0, len(texts) - 1)
            if i not in tokenized:
                tokenized[i] = token_ids(texts[i], tokenizer, bos)
                longest = max(longest, tokenized[i].numel())
            if tokenized[i].numel() > seqlen:
                break
            if len(tokenized) == len(texts) and longest <= seqlen:
                logger.warning("no document of %s is longer than seqlen=%d tokens; drawing windows from joined "
                               "documents", source, seqlen)
                joined = token_ids("\n\n".join(texts), tokenizer, bos)
                return _windows_from_stream(joined, nsamples, seqlen, random.Random(seed),
                                            f"{source}, documents joined")
        ids = tokenized[i]
        start = rng.randint(0, ids.numel() - seqlen - 1)
        samples.append(ids[start:start + seqlen])
    return torch.stack(samples)


def load_documents(spec: str, field: str, default_split: str) -> list[str]:
    """The documents of a local file (read_documents) or of a hub dataset hf:NAME[:CONFIG][@SPLIT]."""
    if spec.startswith(HUB_PREFIX):
        return hub_documents(spec, field, default_split)
    return read_documents(Path(spec).expanduser(), field)


def load_calibration_texts(name: str, data_dir: Path | None, field: str = "text") -> list[str]:
    """The text calibration windows are drawn from: C4 documents, WikiText-2 train rows, or the documents of a
    file or hub dataset (load_documents). Reads the files now."""
    if name == "c4":
        return load_c4_texts(data_dir)
    if name == "wikitext2":
        return load_wikitext2_rows("train", data_dir)
    return load_documents(name, field, "train")


def calibration_source(name: str, data_dir: Path | None) -> str:
    """Where load_calibration_texts(name) reads from: the local file, the hub dataset, or the file as given."""
    if name == "c4":
        return str(c4_file(data_dir) or "hub allenai/c4 en/c4-train.00000-of-01024")
    if name == "wikitext2":
        return str(wikitext2_file("train", data_dir) or "hub wikitext/wikitext-2-raw-v1 train")
    return name


def calibration_windows(name: str, texts: list[str], tokenizer, nsamples: int, seed: int,
                        seqlen: int, source: str | None = None, bos_id: int | None = None) -> torch.Tensor:
    """Calibration token ids [nsamples, seqlen] from load_calibration_texts(name)'s texts, drawn as Wanda does;
    [nsamples, 1 + seqlen] with bos_id in front of each window of seqlen text tokens.

    source names where the texts came from in errors (nsamples beyond the distinct windows, text too short).
    """
    bos = bos_id is not None
    if name != "wikitext2":  # C4, and every file or hub dataset: Wanda's C4 draw over its documents
        return with_bos(c4_windows(texts, tokenizer, nsamples, seed, seqlen, source or name, bos), bos_id)
    ids = token_ids(" ".join(texts), tokenizer, bos)
    windows = _windows_from_stream(ids, nsamples, seqlen, random.Random(seed), source or "WikiText-2 train")
    return with_bos(windows, bos_id)


def get_calibration(name: str, tokenizer, nsamples: int, seed: int, seqlen: int,
                    data_dir: Path | None, bos_id: int | None = None) -> torch.Tensor:
    """Calibration token ids [nsamples, seqlen] from 'c4' (default, as Wanda) or 'wikitext2' (train split)."""
    return calibration_windows(name, load_calibration_texts(name, data_dir), tokenizer, nsamples, seed, seqlen,
                               bos_id=bos_id)


def wikitext2_ids(rows: list[str], tokenizer, bos: bool = False) -> torch.Tensor:
    """The evaluation stream [1, N]: rows joined with '\\n\\n' and tokenised once, exactly as Wanda (bos: the
    text's tokens alone, see token_ids)."""
    return token_ids("\n\n".join(rows), tokenizer, bos)[None]


def get_wikitext2_test_ids(tokenizer, data_dir: Path | None, split: str = "test") -> torch.Tensor:
    """The evaluation stream [1, N] of one WikiText-2 split (see wikitext2_ids)."""
    return wikitext2_ids(load_wikitext2_rows(split, data_dir), tokenizer)


@dataclass(frozen=True, eq=False)  # hashed by identity: a batch runner memoises tokenize_eval on it
class EvalText:
    """One --eval_dataset entry as read: its documents, how they are joined into one stream, where they came from."""

    texts: list[str]
    source: str
    joiner: str = "\n\n"
    max_windows: int | None = None  # SparseGPT's C4 cap

    def ids(self, tokenizer, bos: bool, seqlen: int) -> torch.Tensor:
        """The evaluation stream [1, N]: the documents joined and tokenised once (token_ids), capped."""
        ids = token_ids(self.joiner.join(self.texts), tokenizer, bos)[None]
        return ids if self.max_windows is None else ids[:, :self.max_windows * seqlen]


def load_c4_validation(data_dir: Path | None) -> EvalText:
    """C4's held-out text for perplexity: the local held-out sample, else SparseGPT's validation shard."""
    tried = []
    local = None if data_dir is None else data_dir / "c4" / C4_HELDOUT
    if local is not None and local.is_file():
        texts, source = read_c4_file(local), str(local)
    else:
        if local is not None:
            tried.append(str(local))
        try:
            from datasets import load_dataset

            data = load_dataset("allenai/c4", data_files={"validation": C4_VALIDATION_SHARD}, split="validation")
            texts, source = list(data["text"][:C4_EVAL_DOCUMENTS]), f"hub allenai/c4 {C4_VALIDATION_SHARD}"
        except Exception as err:  # the hub raises many types when offline
            tried.append(f"hub allenai/c4 {C4_VALIDATION_SHARD} ({_hub_error(err)})")
            raise DataError(f"C4 evaluation text not found; looked in: {'; '.join(tried)}. Set --data_dir or "
                            "WANDA_DATA_DIR to a folder like ../shared/data") from None
    return EvalText(texts[:C4_EVAL_DOCUMENTS], source, " ", C4_EVAL_WINDOWS)


def load_eval_text(spec: str, split: str, data_dir: Path | None, field: str = "text") -> EvalText:
    """An --eval_dataset entry: wikitext2 (split `split`, Wanda's stream), c4 (load_c4_validation), or the
    documents of a file or hub dataset (split default test) joined with blank lines."""
    if spec == "wikitext2":
        source = wikitext2_file(split, data_dir)
        return EvalText(load_wikitext2_rows(split, data_dir), str(source or f"hub wikitext/wikitext-2-raw-v1 {split}"))
    if spec == "c4":
        return load_c4_validation(data_dir)
    return EvalText(load_documents(spec, field, "test"), spec)
