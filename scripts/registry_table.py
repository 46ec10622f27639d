"""The README's tables of methods and add-ons, generated from the registries (lib.registry.METHODS and ADDONS).

    PYTHONPATH=$PWD python scripts/registry_table.py            # print the tables
    PYTHONPATH=$PWD python scripts/registry_table.py --write    # replace them in README.md, between the markers

tests/test_architecture.py fails when README.md's tables differ from what this prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lib.plugins import ADDONS, METHODS  # noqa: E402

START, END = "<!-- registry tables: scripts/registry_table.py --write -->", "<!-- end of registry tables -->"


def cell(text: str) -> str:
    """text for a markdown table cell (a '|' in a help line, as in |W|, would end the cell)."""
    return text.replace("|", "\\|")


def tables() -> str:
    """Markdown: one row per registered method, then one per add-on (its kind and the flag that selects it)."""
    rows = ["| `--prune_method` | what it does |", "|---|---|"]
    rows += [f"| `{name}` | {cell(METHODS[name].help)} |" for name in sorted(METHODS)]
    rows += ["", "| add-on | kind | selected by | what it does |", "|---|---|---|---|"]
    for name, cls in sorted(ADDONS.items()):
        flag = f"--{cls.selector}" if cls.off is False else f"--{cls.selector} {name}"
        rows.append(f"| `{name}` | {cls.kind} | `{flag}` | {cell(cls.help)} |")
    return "\n".join(rows)


def readme_with_tables(text: str) -> str:
    """README text with the block between the markers replaced by the current tables."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{tables()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the tables in README.md")
    args = parser.parse_args()
    if not args.write:
        print(tables())
        return 0
    readme = REPO / "README.md"
    readme.write_text(readme_with_tables(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
