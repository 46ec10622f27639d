"""The one resume rule: a run is finished when its results.json parses as strict JSON, holds a perplexity, and
records the settings the run asks for. Standard library only (scripts/finished.py starts in milliseconds).

    why_unfinished(Path("results/addons/u50_wanda/seed0/results.json"), {"prune_method": "wanda", "seed": 0})

A perplexity of null is a result only when results.json lists "ppl_pruned" under "non_finite": main.py writes an
overflowed (infinite) perplexity that way (lib.checks.json_safe). A null without that record is not something
main.py writes: the file was damaged or written by something else, so the run is not finished and reruns.

Settings are looked up in results.json's "config" (and any table nested there), then at its top level;
a setting results.json does not record (eval_batch_size, no_dense_eval, offload: how a run was executed, not what
it measured) is not compared. None asks for null, except for AUTO_SETTINGS, where None means "main.py chooses"
(the wanda protocol's seqlen is the model's maximum up to 2048) and any recorded value is accepted.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

AUTO_SETTINGS = {"seqlen"}
_MISSING = object()


def _strict(constant: str):
    raise ValueError(f"{constant} is not JSON")


def read_results(path: Path) -> tuple[dict | None, str | None]:
    """(results, None) for a results.json that parses as a strict JSON object, else (None, why not)."""
    if not path.is_file():
        return None, f"{path} does not exist"
    try:
        results = json.loads(path.read_text(encoding="utf-8"), parse_constant=_strict)
    except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError, NaN, unreadable
        return None, f"{path} is not valid JSON ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if not isinstance(results, dict):
        return None, f"{path} holds {type(results).__name__}, not a run's results"
    return results, None


def perplexity_problem(results: dict, key: str = "ppl_pruned") -> str | None:
    """None when results[key] is a number, or null recorded as an overflow under "non_finite"; else why not."""
    value = results.get(key, _MISSING)
    if value is _MISSING:
        return f"no '{key}'"
    if value is None:
        non_finite = results.get("non_finite")
        if isinstance(non_finite, list) and key in non_finite:
            return None
        return f"'{key}' is null but not listed under 'non_finite' (not an overflow main.py recorded)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"'{key}' is {json.dumps(value)}, not a number"
    return None


def recorded(results: dict, name: str) -> Any:
    """The value results.json records for a setting: its "config" (the pruning settings, and any table nested there)
    first, then "<name>_setting" at the top level (where the top-level key holds what main.py resolved the setting
    to, as "bos": "always" for "bos_setting": "auto"), then the top level itself (the run settings; a top-level key
    may instead hold a measurement, like the per-layer "layer_ratios" list OWL computed from the setting "owl")."""
    tables = [results.get("config")]
    while tables:
        table = tables.pop(0)
        if isinstance(table, dict):
            if name in table:
                return table[name]
            tables += [v for v in table.values() if isinstance(v, dict)]
    return results.get(f"{name}_setting", results.get(name, _MISSING))


def same(recorded_value: Any, expected: Any) -> bool:
    """Equal as settings: numbers compare as numbers (0.5 == 0.50, 16 == 16.0), booleans only to booleans."""
    if expected is None or recorded_value is None:
        return expected is recorded_value
    if isinstance(expected, bool) or isinstance(recorded_value, bool):
        return expected is recorded_value
    if isinstance(expected, (int, float)) and isinstance(recorded_value, (int, float)):
        return math.isclose(recorded_value, expected, rel_tol=1e-12, abs_tol=1e-12)
    return recorded_value == expected


def why_unfinished(path: Path, expected: dict[str, Any]) -> str | None:
    """None when path is a finished run with the expected settings, else the reason it is not."""
    results, problem = read_results(path)
    if results is None:
        return problem
    problem = perplexity_problem(results)
    if problem:
        return f"{path}: {problem}"
    for name, value in expected.items():
        found = recorded(results, name)
        if found is _MISSING or (value is None and name in AUTO_SETTINGS):
            continue
        if not same(found, value):
            return f"{path} records {name}={json.dumps(found)}, this run has {name}={json.dumps(value)}"
    return None


def parse_value(text: str) -> Any:
    """A command-line value as a setting: 'none'/'null' -> None, JSON numbers and booleans, else the text."""
    if text.lower() in ("none", "null"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) else text
