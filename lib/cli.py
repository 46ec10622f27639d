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
import traceback
import types
import typing
from typing import Any, Callable, Iterator

from lib.config import all_fields, bounds_text, flag_name
from lib.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUN_FAILED, EXIT_TERMINATED, ConfigError, RunError

# Set to 1 to print the full traceback (every cause) of an error, as --debug does.
DEBUG_ENV = "WANDA_DEBUG"


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


def int_or_none(word: str) -> Callable[[str], int | None]:
    """An optional int flag's type: `word` (e.g. 'all') is None, the default it names; anything else an int."""
    def parse(text: str) -> int | None:
        if text == word:
            return None
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor '{word}'") from None
    return parse


def comma_list(text: str) -> tuple[str, ...]:
    """A comma-separated flag value as a tuple of its non-empty, stripped items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _flag_type(hint: Any) -> type:
    """int / float / str / bool from a field's type hint (Optional unwrapped)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_settings(parser: argparse.ArgumentParser, cls: type, choices: dict[str, tuple] | None = None) -> None:
    """One flag per field of the settings dataclass cls, in argument groups named by the fields' metadata.

    choices: {field: values} shown for fields whose values a registry holds (checked there, not here)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, owner in all_fields(cls):
        meta = f.metadata
        name = meta["group"] or getattr(owner, "group", "options")
        group = groups.get(name) or groups.setdefault(name, parser.add_argument_group(name))
        flags, dest = meta["flags"] or (f"--{f.name}",), flag_name(f)
        kind = _flag_type(typing.get_type_hints(owner)[f.name])
        text = f"{meta['help']}; {bounds_text(meta['bounds'])}" if meta.get("bounds") else meta["help"]
        if kind is bool:
            group.add_argument(*flags, dest=dest, action="store_true", help=text)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(*flags, dest=dest, default=f.default, help=f"{text} (comma-separated)",
                               metavar="A,B", type=comma_list, required=meta.get("required", False))
        else:
            # Choices are checked by the dataclass (one message style for every bad value), shown here.
            shown = (choices or {}).get(f.name) or meta["choices"]
            metavar = "{" + ",".join(shown) + "}" if shown else kind.__name__.upper()
            parse = {float: finite_float, int: int, str: str}[kind]
            if meta.get("none_word"):
                parse, metavar = int_or_none(meta["none_word"]), f"{metavar}|{meta['none_word']}"
            group.add_argument(*flags, dest=dest, default=f.default, help=text, metavar=metavar, type=parse,
                               required=meta.get("required", False))


def settings_from(cls: type, args: argparse.Namespace) -> Any:
    """The validated settings dataclass cls from parsed flags (ConfigError on a bad value)."""
    return cls(**{f.name: getattr(args, flag_name(f)) for f, _ in all_fields(cls)})


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


def debugging(flag: bool = False) -> bool:
    """True when the traceback is wanted: --debug, or $WANDA_DEBUG set to anything but '' or '0'."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def print_error(err: BaseException, debug: bool) -> None:
    """'error: <message>' on stderr; with debug, first the full traceback with every cause ('from None' too)."""
    if debug:
        cause: BaseException | None = err
        while cause is not None:  # show the causes a one-line message hid with 'from None'
            cause.__suppress_context__ = False
            cause = cause.__cause__ or cause.__context__
        traceback.print_exception(err)
    print(f"error: {err}", file=sys.stderr)


def run_cli(main: Callable[[], Any], progress: Progress | None = None, debug: bool = False) -> int:
    """Call main() with SIGINT and SIGTERM as interrupts; a ConfigError becomes one line on stderr and exit
    status 2, a RunError (the data or the model's numbers) one line and status 3, Ctrl-C one line and status 130,
    SIGTERM one line and status 143. debug: the traceback as well."""
    with signals_as_interrupts():
        try:
            main()
        except ConfigError as err:
            print_error(err, debugging(debug))
            return EXIT_BAD_INPUT
        except RunError as err:
            print_error(err, debugging(debug))
            return EXIT_RUN_FAILED
        except Terminated:
            # 143 = 128 + SIGTERM, what a shell and Slurm report for a terminated job.
            print(f"\n{(progress or Progress('run')).interrupted('terminated (SIGTERM)')}", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            # 130 = 128 + SIGINT, what a shell reports for Ctrl-C: batch scripts test for it and stop.
            print(f"\n{(progress or Progress('run')).interrupted()}", file=sys.stderr)
            return EXIT_INTERRUPTED
    return 0
