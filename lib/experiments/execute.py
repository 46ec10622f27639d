"""Running main.py's runs: in this process (the model loaded once per model, its dense weights restored before each
run, the data read once), and the signal rule every executor shares.

    status = execute(runs, log_dir=None)   # 0 all done, 1 some failed, 130 Ctrl-C, 143 SIGTERM

SIGTERM (what Slurm sends on preemption and at the time limit, and what `kill` sends) is handled like Ctrl-C: the
current run stops with main.py's one-line message, nothing half-written is left (main.py writes results.json last
and atomically), the batch stops, and the exit status is 143 (128 + SIGTERM). Rerunning the command resumes.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType, ModuleType
from typing import Callable, Iterator

log = logging.getLogger(__name__)
INTERRUPTED = (130, 143)  # main.py's and the runner's exit statuses for Ctrl-C and SIGTERM


class Signals:
    """Which stop signal arrived; SIGTERM raises KeyboardInterrupt like Ctrl-C, so every clean-up path is shared."""

    terminated = False

    @classmethod
    def install(cls) -> None:
        """SIGTERM -> KeyboardInterrupt, and Ctrl-C -> KeyboardInterrupt also where a background shell had set SIGINT
        to be ignored (as main.py and lora_ft do: a batch started with `&` from a script stops on `kill -INT` too),
        in the main thread (signal handlers can only be set there)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, cls._on_sigterm)
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @classmethod
    def _on_sigterm(cls, signum: int, frame: FrameType | None) -> None:
        cls.terminated = True
        raise KeyboardInterrupt

    @classmethod
    def status(cls) -> int:
        """The exit status of a stopped batch: 143 after SIGTERM, else 130."""
        return 143 if cls.terminated else 130


def load_once(real: Callable) -> Callable:
    """main.load_with_store that loads on the first call for a model and afterwards restores its dense weights in
    place. A model that is offloaded (too big to keep a dense copy in memory) is loaded afresh for every run."""
    kept: dict = {}

    def load(*args):
        if args != kept.get("args"):
            kept.clear()  # the previous model's weights go before the next model loads
            loaded = real(*args)
            if loaded[2].mode != "none":
                log.info("offload %s: the model is loaded again for every run", loaded[2].mode)
                return loaded
            kept.update(args=args, loaded=loaded,
                        dense={k: v.detach().clone() for k, v in loaded[0].state_dict().items()})
            return loaded
        kept["loaded"][0].load_state_dict(kept["dense"])
        return kept["loaded"]
    return load


# main's readers of the data, tokenizer and config, memoised per process (whichever of these main.py has).
READERS = ("load_wikitext2_rows", "load_eval_text", "load_calibration_texts", "load_tokenizer", "load_config",
           "tokenize_eval")


def cache_data(main_module: ModuleType) -> None:
    """Read and tokenise each data file once: main.check's readers, memoised on their arguments."""
    for name in READERS:
        if hasattr(main_module, name):
            setattr(main_module, name, functools.lru_cache(maxsize=None)(getattr(main_module, name)))
    if not hasattr(main_module, "wikitext2_ids"):
        return
    ids, tokenize = {}, main_module.wikitext2_ids

    def wikitext2_ids(rows, tokenizer):
        key = (id(rows), id(tokenizer))  # the memoised rows and tokenizer are the same objects on every call
        if key not in ids:
            ids[key] = tokenize(rows, tokenizer)
        return ids[key]
    main_module.wikitext2_ids = wikitext2_ids


@functools.lru_cache(maxsize=None)
def prepared_main() -> ModuleType:
    """main, with the model kept per model and the data read once (patched once per process)."""
    import main

    main.load_with_store = load_once(main.load_with_store)
    cache_data(main)
    return main


@contextlib.contextmanager
def output_to(path: Path | None) -> Iterator[None]:
    """stdout and stderr appended to path: the file descriptors (C libraries, a logging handler made earlier) and
    sys.stdout/sys.stderr (print, tqdm, also where they were replaced, as under pytest)."""
    if path is None:
        yield
        return
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as handle:
        os.dup2(handle.fileno(), 1), os.dup2(handle.fileno(), 2)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def run_one(argv: list[str], folder: Path, log_to_file: bool) -> int:
    """main.main(argv) in this process -> its exit status; output into folder/run.log when log_to_file."""
    main = prepared_main()
    folder.mkdir(parents=True, exist_ok=True)
    sys.argv = ["main.py", *argv]  # results.json records the equivalent command
    Signals.install()  # again: main.main may have set its own SIGTERM handler during the previous run
    with output_to(folder / "run.log" if log_to_file else None):
        try:
            status = main.main(argv)
        except Exception:  # a traceback in one run must not stop the others; it is in the run's output
            traceback.print_exc()
            status = 1
    Signals.install()
    if status == 143:  # main.main's own SIGTERM handler (lib.cli.signals_as_interrupts) stopped the run
        Signals.terminated = True
    if Signals.terminated and status == 130:
        return 143
    return status
