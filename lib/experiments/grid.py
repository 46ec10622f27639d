"""Grid files: a TOML file naming the protocol, models, seeds and blocks of settings, expanded into runs.

    runs = expand(load_grid(Path("experiments/addons.toml")))

The format (experiments/README.md has an annotated example):

    protocol = "experiment"            # a name in lib/protocols.py
    models = ["smollm2-135m"]
    seeds = [0, 1, 2]
    results_dir = "results/addons"     # relative to the repository root, or absolute
    path = "{label}/seed{seed}"        # run folder under results_dir (default "{model}/{label}/seed{seed}")
    settings = { no_dense_eval = true } # main.py settings of every run

    [[block]]                          # one product of axes; a grid is the union of its blocks
    label = "{ratio}_{prune_method}"   # default: the axis values joined by "_"
    settings = { sparsity_type = "unstructured" }
    [block.axes]
    prune_method = ["wanda", "sparsegpt"]                          # a list: values of the setting of that name
    ratio = { u50 = { sparsity_ratio = 0.5 }, u60 = { sparsity_ratio = 0.6 } }   # a table: named settings

A setting is a main.py setting name (its flag without "--") with a TOML string, number or boolean. Any mistake is a
GridError naming the file and the key, before anything runs.
"""
from __future__ import annotations

import itertools
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TOP_KEYS = {"description", "protocol", "models", "seeds", "results_dir", "path", "settings", "dense_eval", "block"}
DENSE_EVAL = ("all", "first", "none")
BLOCK_KEYS = {"label", "settings", "axes", "seeds"}
# Settings the runner itself sets per run; a grid naming them would fight it.
RUNNER_SETTINGS = {"model", "seed", "save", "protocol"}


class GridError(ValueError):
    """A grid file that cannot be expanded: the message names the file and the key."""


@dataclass(frozen=True)
class Run:
    """One main.py run of a grid: where it writes and the settings it was asked for."""

    label: str
    model: str
    seed: int
    protocol: str
    settings: dict[str, Any] = field(hash=False)  # main.py settings besides model, seed, protocol and save
    folder: Path = Path()

    def argv(self) -> list[str]:
        """main.py's arguments for this run (a true boolean is a bare flag, a false one is left out)."""
        args = ["--model", self.model, "--protocol", self.protocol]
        for name, value in self.settings.items():
            if value is True:
                args.append(f"--{name}")
            elif value is not False:
                args += [f"--{name}", str(value)]
        return args + ["--seed", str(self.seed), "--save", str(self.folder)]


@dataclass
class Grid:
    """A parsed grid file."""

    path: Path
    protocol: str
    models: list[str]
    seeds: list[int]
    results_dir: Path
    layout: str
    settings: dict[str, Any]
    blocks: list[dict[str, Any]]
    description: str = ""
    dense_eval: str = "all"  # first: only the first run of each model that runs measures the dense perplexity


def _fail(path: Path, key: str, problem: str) -> GridError:
    return GridError(f"{path}: {key}: {problem}")


def _check_settings(path: Path, key: str, table: Any) -> dict[str, Any]:
    """A table of setting name -> string, number or boolean."""
    if not isinstance(table, dict):
        raise _fail(path, key, f"must be a table of settings, not {type(table).__name__} {table!r}")
    for name, value in table.items():
        if name in RUNNER_SETTINGS:
            instead = {"model": "models", "seed": "seeds"}.get(name, "keys")
            raise _fail(path, f"{key}.{name}", f"is set by the runner; use the grid's top-level {instead}")
        if not isinstance(value, (str, int, float)):  # bool is an int
            raise _fail(path, f"{key}.{name}", f"must be a string, number or boolean, not {type(value).__name__} "
                                               f"{value!r}")
    return dict(table)


def _list_of(path: Path, key: str, value: Any, kind: type | tuple) -> list:
    """A non-empty list whose items are all of kind (bool is not an int here)."""
    if (not isinstance(value, list) or not value
            or any(not isinstance(v, kind) or isinstance(v, bool) for v in value)):
        raise _fail(path, key, f"must be a non-empty list of {kind.__name__}, not {value!r}")
    if len(set(value)) != len(value):
        raise _fail(path, key, f"lists a value twice: {value!r}")
    return value


def _check_block(path: Path, index: int, block: Any) -> dict[str, Any]:
    """One [[block]]: its axes as {axis: {value name: settings}}, its label template and settings."""
    key = f"block[{index}]"
    if not isinstance(block, dict):
        raise _fail(path, key, "must be a table")
    unknown = sorted(set(block) - BLOCK_KEYS)
    if unknown:
        raise _fail(path, f"{key}.{unknown[0]}", f"is not a block key; use {sorted(BLOCK_KEYS)}")
    axes: dict[str, dict[str, dict]] = {}
    raw_axes = block.get("axes", {})
    if not isinstance(raw_axes, dict):
        raise _fail(path, f"{key}.axes", "must be a table of axes")
    for axis, values in raw_axes.items():
        where = f"{key}.axes.{axis}"
        if isinstance(values, list):
            if not values or len({type(v) for v in values}) > 1 or len({_value_name(v) for v in values}) < len(values):
                raise _fail(path, where, f"must be a list of distinct values of one type, not {values!r}")
            axes[axis] = {_value_name(v): _check_settings(path, where, {axis: v}) for v in values}
        elif isinstance(values, dict) and values:
            axes[axis] = {name: _check_settings(path, f"{where}.{name}", s) for name, s in values.items()}
        else:
            raise _fail(path, where, f"must be a list of values or a table of named settings, not {values!r}")
    label = block.get("label", "_".join(f"{{{a}}}" for a in axes))
    if not isinstance(label, str):
        raise _fail(path, f"{key}.label", f"must be a string, not {label!r}")
    fields = {f for _, f, _, _ in string.Formatter().parse(label) if f is not None}
    if fields - set(axes):
        raise _fail(path, f"{key}.label", f"names {sorted(fields - set(axes))[0]!r}, not an axis of this block "
                                          f"({sorted(axes)})")
    seeds = _list_of(path, f"{key}.seeds", block["seeds"], int) if "seeds" in block else None
    return {"label": label, "settings": _check_settings(path, f"{key}.settings", block.get("settings", {})),
            "axes": axes, "seeds": seeds}


def _value_name(value: Any) -> str:
    """A label part for a listed value: 0.5 -> '0.5', 'wanda' -> 'wanda'."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def load_grid(path: Path, protocols: dict[str, Any] | None = None) -> Grid:
    """Parse and check a grid file; GridError names the file and the key of the first problem."""
    if protocols is None:
        from lib.protocols import PROTOCOLS as protocols
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise GridError(f"{path}: cannot read ({err.strerror or err})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise GridError(f"{path}: not valid TOML ({str(err).splitlines()[0]})") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise _fail(path, unknown[0], f"is not a grid key; use {sorted(TOP_KEYS)}")
    for required in ("protocol", "models", "seeds", "block"):
        if required not in data:
            raise _fail(path, required, "is missing")
    if data["protocol"] not in protocols:
        raise _fail(path, "protocol", f"{data['protocol']!r} is not one of {sorted(protocols)}")
    seeds = _list_of(path, "seeds", data["seeds"], int)
    if any(s < 0 for s in seeds):
        raise _fail(path, "seeds", f"must be >= 0, not {seeds!r}")
    layout = data.get("path", "{model}/{label}/seed{seed}")
    results_dir = data.get("results_dir", f"results/{path.stem}")
    for key, value in (("path", layout), ("results_dir", results_dir), ("description", data.get("description", ""))):
        if not isinstance(value, str):
            raise _fail(path, key, f"must be a string, not {value!r}")
    fields = {f for _, f, _, _ in string.Formatter().parse(layout) if f is not None}
    if fields - {"model", "label", "seed"} or not {"label", "seed"} <= fields:
        raise _fail(path, "path", f"{layout!r} must use {{label}} and {{seed}}, and may use {{model}}, nothing else")
    if data.get("dense_eval", "all") not in DENSE_EVAL:
        raise _fail(path, "dense_eval", f"{data['dense_eval']!r} is not one of {list(DENSE_EVAL)}")
    if not isinstance(data["block"], list) or not data["block"]:
        raise _fail(path, "block", "must be one or more [[block]] tables")
    return Grid(path=path, protocol=data["protocol"], models=_list_of(path, "models", data["models"], str),
                seeds=seeds, results_dir=REPO / results_dir, layout=layout,
                settings=_check_settings(path, "settings", data.get("settings", {})),
                blocks=[_check_block(path, i, b) for i, b in enumerate(data["block"])],
                description=data.get("description", ""), dense_eval=data.get("dense_eval", "all"))


def model_tag(model: str) -> str:
    """The folder name of a model: the last path component without .gguf ('org/Llama-2-7b' -> 'Llama-2-7b')."""
    return Path(model.rstrip("/")).name.removesuffix(".gguf")


def expand(grid: Grid) -> list[Run]:
    """Every run of the grid: model-major (a local executor loads each model once), then label, then seed (a label's
    seeds finish together, for the paired test). A block's seeds replace the grid's; a label in two blocks with the
    same settings runs the union of their seeds. Two different runs in one folder are a GridError."""
    labelled: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for index, block in enumerate(grid.blocks):
        names = list(block["axes"])
        for combo in itertools.product(*(block["axes"][a].items() for a in names)):
            label = block["label"].format(**{a: value_name for a, (value_name, _) in zip(names, combo)})
            settings = {**grid.settings, **block["settings"]}
            if grid.dense_eval != "all":  # "first" is given back to one run per model by the runner
                settings["no_dense_eval"] = True
            for _, axis_settings in combo:
                settings.update(axis_settings)
            if not label:
                raise _fail(grid.path, f"block[{index}].label", "gives an empty label; name the run")
            if label in labelled and labelled[label][0] != settings:
                raise _fail(grid.path, f"block[{index}].label", f"gives two runs the label {label!r}: "
                                                                 f"{labelled[label][0]} and {settings}")
            seeds = labelled.get(label, (None, []))[1]
            labelled[label] = (settings, seeds + [s for s in block["seeds"] or grid.seeds if s not in seeds])
    tags = {model_tag(m) for m in grid.models}
    if len(tags) < len(grid.models) or (len(grid.models) > 1 and "{model}" not in grid.layout):
        raise _fail(grid.path, "path", f"{grid.layout!r} would put runs of different models {grid.models} in one "
                                       "folder; use {model} in it")
    return [Run(label=label, model=model, seed=seed, protocol=grid.protocol, settings=dict(settings),
                folder=grid.results_dir / grid.layout.format(model=model_tag(model), label=label, seed=seed))
            for model in grid.models for label, (settings, seeds) in labelled.items() for seed in seeds]
