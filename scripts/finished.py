"""Whether a run is finished: its results.json parses as strict JSON and records the settings it was run with.

    python scripts/finished.py out/wanda/seed0/results.json prune_method=wanda sparsity_ratio=0.5 seed=0 eval_limit=none

Exit 0 when finished; else exit 1 and one line on stdout saying why (missing, unreadable, another run's
settings). Batch scripts rerun a run that is not finished instead of skipping it. Standard library only, so
it starts in milliseconds (no torch).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _strict(constant: str):
    raise ValueError(f"{constant} is not JSON")


def same(recorded, expected: str) -> bool:
    """A recorded JSON value equals the expected command-line text ('none' = null; numbers compare as numbers)."""
    if expected.lower() in ("none", "null"):
        return recorded is None
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)):
        return str(recorded) == expected
    try:
        return math.isclose(float(recorded), float(expected), rel_tol=1e-12, abs_tol=1e-12)
    except ValueError:
        return False


def why_unfinished(path: Path, expected: dict[str, str]) -> str | None:
    """None when path is a finished run with the expected settings, else the reason it is not."""
    if not path.is_file():
        return f"{path} does not exist"
    try:
        results = json.loads(path.read_text(encoding="utf-8"), parse_constant=_strict)
    except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError, NaN, unreadable
        return f"{path} is not valid JSON ({str(err).splitlines()[0]})"
    if not isinstance(results, dict) or "ppl_pruned" not in results:
        return f"{path} holds no run's results (no 'ppl_pruned')"
    for key, value in expected.items():
        if key not in results:
            return f"{path} does not record '{key}'"
        if not same(results[key], value):
            return f"{path} records {key}={json.dumps(results[key])}, this run has {key}={value}"
    return None


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv[1:]):
        print("usage: finished.py RESULTS_JSON key=value ...", file=sys.stderr)
        return 2
    reason = why_unfinished(Path(argv[0]), dict(a.split("=", 1) for a in argv[1:]))
    if reason:
        print(reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
