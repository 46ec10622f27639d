"""Command lines built from the settings dataclasses: each field's metadata is its flag (the only module that
touches argparse besides the entry points themselves).

    parser = OneLineParser(); add_settings(parser, PruneConfig); config = settings_from(PruneConfig, parser.parse_args())
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import traceback
import types
import typing
from typing import Any, Callable

from lib.config import all_fields, bounds_text, flag_name
from lib.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUN_FAILED, ConfigError, RunError

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
            group.add_argument(*flags, dest=dest, default=f.default, help=text, metavar=metavar,
                               type={float: finite_float, int: int, str: str}[kind],
                               required=meta.get("required", False))


def settings_from(cls: type, args: argparse.Namespace) -> Any:
    """The validated settings dataclass cls from parsed flags (ConfigError on a bad value)."""
    return cls(**{f.name: getattr(args, flag_name(f)) for f, _ in all_fields(cls)})


@dataclasses.dataclass
class Progress:
    """Where a run is (its phase) and which outputs it has finished writing, for the one-line interrupt message."""

    phase: str = "startup"
    written: list[str] = dataclasses.field(default_factory=list)

    def interrupted(self) -> str:
        """'interrupted during <phase>; nothing written' (or what was written before the interrupt)."""
        done = f"wrote only {', '.join(self.written)}" if self.written else "nothing written"
        return f"interrupted during {self.phase}; {done}"


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
    """Call main(); a ConfigError becomes one line on stderr and exit status 2, a RunError (the data or the
    model's numbers) one line and status 3, Ctrl-C one line and status 130. debug: the traceback as well."""
    try:
        main()
    except ConfigError as err:
        print_error(err, debugging(debug))
        return EXIT_BAD_INPUT
    except RunError as err:
        print_error(err, debugging(debug))
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        # 130 = 128 + SIGINT, what a shell reports for Ctrl-C: batch scripts test for it and stop.
        print(f"\n{(progress or Progress('run')).interrupted()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
