"""Calibration windows (C4, WikiText-2) and the WikiText-2 evaluation stream, local files first, then the hub.

Local layout (``--data_dir`` or ``$WANDA_DATA_DIR``, e.g. ../shared/data):
    wikitext-2-raw/wiki.{train,valid,test}.raw
    c4/c4-en-train.00000-of-01024.first1000.jsonl.gz   (preferred; else the first c4/*.jsonl.gz by name)
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import random
import zlib
from pathlib import Path

import torch

from lib.config import CALIB_DATASETS, ConfigError

logger = logging.getLogger(__name__)

WIKITEXT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
C4_PREFERRED = "c4-en-train.00000-of-01024.first1000.jsonl.gz"


class DataError(ConfigError):
    """Data could be found nowhere; the message names every place that was tried."""


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The local data folder: the flag, else $WANDA_DATA_DIR, else None (hub only)."""
    chosen = data_dir or os.environ.get("WANDA_DATA_DIR")
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data_dir '{chosen}' is not a folder")
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


def read_c4_file(path: Path) -> list[str]:
    """The 'text' of every row of a C4 .jsonl.gz file; a damaged file is a DataError naming it and the line."""
    texts: list[str] = []
    lineno = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise DataError(f"C4 file '{path}' line {lineno} has no string 'text' field; each line must be "
                                    'a JSON object like {"text": "..."}')
                texts.append(row["text"])
    except json.JSONDecodeError as err:
        raise DataError(f"C4 file '{path}' line {lineno} is not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"C4 file '{path}' line {lineno + 1} is not UTF-8 text") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        what = "is truncated" if isinstance(err, EOFError) else "is not a valid gzip file"
        raise DataError(f"C4 file '{path}' {what} (after {lineno} lines: {err}); replace it with an intact copy") \
            from None
    except OSError as err:
        raise DataError(f"C4 file '{path}' cannot be read ({err.strerror or err})") from None
    if not any(text.strip() for text in texts):
        raise DataError(f"C4 file '{path}' holds no text (no row with a non-empty 'text')")
    return texts


def wikitext2_file(split: str, data_dir: Path | None) -> Path | None:
    """The local file a WikiText-2 split is read from, or None when it comes from the hub (for messages)."""
    path = None if data_dir is None else data_dir / "wikitext-2-raw" / WIKITEXT_FILES.get(split, "")
    return path if path is not None and path.is_file() else None


def c4_file(data_dir: Path | None) -> Path | None:
    """The local C4 file calibration is read from, or None when it comes from the hub (for messages)."""
    if data_dir is None:
        return None
    folder = data_dir / "c4"
    files = [folder / C4_PREFERRED] if (folder / C4_PREFERRED).is_file() else sorted(folder.glob("*.jsonl.gz"))
    return files[0] if files else None


def load_wikitext2_rows(split: str, data_dir: Path | None) -> list[str]:
    """WikiText-2 raw rows as Hugging Face `datasets` gives them: lines with '\\n', blank lines as ''."""
    if split not in WIKITEXT_FILES:
        raise DataError(f"wikitext2 split '{split}' is not one of {sorted(WIKITEXT_FILES)}")
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
        folder = data_dir / "c4"
        files = [folder / C4_PREFERRED] if (folder / C4_PREFERRED).is_file() else sorted(folder.glob("*.jsonl.gz"))
        if files:
            return read_c4_file(files[0])
        tried.append(f"{folder}/*.jsonl.gz")
    try:
        from datasets import load_dataset

        data = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
        return list(data["text"])
    except Exception as err:
        tried.append(f"hub allenai/c4 en/c4-train.00000-of-01024 ({_hub_error(err)})")
    raise DataError(f"C4 calibration data not found; looked in: {'; '.join(tried)}. "
                    "Set --data_dir or WANDA_DATA_DIR to a folder like ../shared/data")


# Model families trained with BOS at the start of every input, whose perplexity without it describes the model
# outside its training regime (Gemma3-270M, WikiText-2, 256-token windows: 139.5 without, 31.3 with; README).
# lm-eval's HFLM makes the same exception for Gemma. Every other family keeps Wanda's protocol under --bos auto.
BOS_FAMILIES = ("gemma",)


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
                logger.warning("no C4 document is longer than seqlen=%d tokens; drawing windows from joined "
                               "documents", seqlen)
                joined = token_ids("\n\n".join(texts), tokenizer, bos)
                return _windows_from_stream(joined, nsamples, seqlen, random.Random(seed),
                                            f"{source}, documents joined")
        ids = tokenized[i]
        start = rng.randint(0, ids.numel() - seqlen - 1)
        samples.append(ids[start:start + seqlen])
    return torch.stack(samples)


def load_calibration_texts(name: str, data_dir: Path | None) -> list[str]:
    """The text calibration windows are drawn from: C4 documents, or WikiText-2 train rows. Reads the files now."""
    if name == "c4":
        return load_c4_texts(data_dir)
    if name == "wikitext2":
        return load_wikitext2_rows("train", data_dir)
    raise DataError(f"calib_dataset '{name}' is not one of {list(CALIB_DATASETS)}")


def calibration_windows(name: str, texts: list[str], tokenizer, nsamples: int, seed: int,
                        seqlen: int, source: str | None = None, bos_id: int | None = None) -> torch.Tensor:
    """Calibration token ids [nsamples, seqlen] from load_calibration_texts(name)'s texts, drawn as Wanda does;
    [nsamples, 1 + seqlen] with bos_id in front of each window of seqlen text tokens.

    source names where the texts came from in errors (nsamples beyond the distinct windows, text too short).
    """
    bos = bos_id is not None
    if name == "c4":
        return with_bos(c4_windows(texts, tokenizer, nsamples, seed, seqlen, source or "C4", bos), bos_id)
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
