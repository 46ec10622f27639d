"""Whether a run is finished: its results.json parses as strict JSON, holds a perplexity (or an overflow that main.py
recorded) and records the settings it was run with (lib/experiments/resume.py, the rule the runner uses).

    python scripts/finished.py out/wanda/seed0/results.json prune_method=wanda sparsity_ratio=0.5 seed=0 eval_limit=none

Exit 0 when finished; else exit 1 and one line on stdout saying why (missing, unreadable, no perplexity, another
run's settings). Standard library only, so it starts in milliseconds (no torch).
"""
from __future__ import annotations

import sys
from pathlib import Path

from lib.experiments.resume import parse_value, why_unfinished


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv[1:]):
        print("usage: finished.py RESULTS_JSON key=value ...", file=sys.stderr)
        return 2
    expected = {key: parse_value(value) for key, value in (a.split("=", 1) for a in argv[1:])}
    reason = why_unfinished(Path(argv[0]), expected)
    if reason:
        print(reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
