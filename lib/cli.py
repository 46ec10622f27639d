"""Command lines built from the settings dataclasses: each field's metadata is its flag (the only module that
touches argparse besides the entry points themselves).

    parser = OneLineParser(); add_settings(parser, PruneConfig); config = settings_from(PruneConfig, parser.parse_args())
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import types
import typing
from typing import Any, Callable, Iterator

from lib.config import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line, like every other input error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def finite_float(text: str) -> float:
    """A float flag's value; NaN and inf are refused (no setting means them)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _flag_type(hint: Any) -> type:
    """int / float / str / bool from a field's type hint (Optional unwrapped)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the settings dataclass cls, in argument groups named by the fields' metadata."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flags = meta["flags"] or (f"--{f.name}",)
        kind = _flag_type(hints[f.name])
        if kind is bool:
            group.add_argument(*flags, dest=f.name, action="store_true", help=meta["help"])
        else:
            # Choices are checked by the dataclass (one message style for every bad value), shown here.
            metavar = "{" + ",".join(meta["choices"]) + "}" if meta["choices"] else kind.__name__.upper()
            group.add_argument(*flags, dest=f.name, default=f.default, help=meta["help"], metavar=metavar,
                               type={float: finite_float, int: int, str: str}[kind])


def settings_from(cls: type, args: argparse.Namespace) -> Any:
    """The validated settings dataclass cls from parsed flags (ConfigError on a bad value)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class Progress:
    """Where a run is (its phase) and which outputs it has finished writing, for the one-line interrupt message."""

    phase: str = "startup"
    written: list[str] = dataclasses.field(default_factory=list)

    def interrupted(self, how: str = "interrupted") -> str:
        """'interrupted during <phase>; nothing written' (or what was written before the interrupt)."""
        done = f"wrote only {', '.join(self.written)}" if self.written else "nothing written"
        return f"{how} during {self.phase}; {done}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm's preemption and time limit, kill): raised where Ctrl-C raises KeyboardInterrupt, so the
    same finally blocks remove the same temporary files."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _exit_during_startup(signum: int, frame: object) -> None:
    word = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    sys.stderr.write(f"\n{word} during startup; nothing written\n")
    os._exit(128 + signum)


def quiet_startup() -> None:
    """For an entry point's `if __name__ == "__main__"` block, before its heavy imports (torch, transformers):
    Ctrl-C or SIGTERM there is one line and exit 130 / 143 instead of the import's traceback."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_during_startup)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Inside: Ctrl-C raises KeyboardInterrupt and SIGTERM raises Terminated (a KeyboardInterrupt), also where
    a background shell had set SIGINT to be ignored; the previous handlers are restored on exit. run_cli uses
    it; a batch runner can too, to stop its child the same way:

        with signals_as_interrupts():
            try:
                child.wait()
            except KeyboardInterrupt as stop:   # Terminated after SIGTERM
                child.send_signal(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    """
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def run_cli(main: Callable[[], Any], progress: Progress | None = None) -> int:
    """Call main() with SIGINT and SIGTERM as interrupts; a ConfigError becomes one line on stderr and exit
    status 2, Ctrl-C one line and status 130, SIGTERM one line and status 143."""
    with signals_as_interrupts():
        try:
            main()
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Terminated:
            # 143 = 128 + SIGTERM, what a shell and Slurm report for a terminated job.
            print(f"\n{(progress or Progress('run')).interrupted('terminated (SIGTERM)')}", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            # 130 = 128 + SIGINT, what a shell reports for Ctrl-C: batch scripts test for it and stop.
            print(f"\n{(progress or Progress('run')).interrupted()}", file=sys.stderr)
            return 130
    return 0
