"""The wiring a contributor relies on: every lib module imports alone, no import circles, the config is light,
and a method registered anywhere (here, inside this test module) is a CLI choice and prunes end to end.

    python -m pytest -q tests/test_architecture.py
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from lib.registry import METHODS, Method, register
from test_methods import check_end_to_end

LIB = Path(__file__).resolve().parent.parent / "lib"
MODULES = sorted("lib." + ".".join(p.relative_to(LIB).with_suffix("").parts).removesuffix(".__init__")
                 for p in LIB.rglob("*.py"))


def test_every_lib_module_imports_on_its_own():
    # One fresh interpreter; before each module every lib.* module is forgotten, so each import starts cold.
    code = ("import importlib, sys\n"
            f"for name in {MODULES!r}:\n"
            "    for loaded in [m for m in sys.modules if m == 'lib' or m.startswith('lib.')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]


def module_imports(path: Path) -> set[str]:
    """The lib modules one file imports anywhere, inside functions too (not under `if TYPE_CHECKING:`).

    `from lib import x` of a submodule counts as importing lib.x, not the package's own code."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lib")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found & set(MODULES)


def test_lib_has_no_import_circle():
    graph = {name: module_imports(LIB.parent / (name.replace(".", "/") + ".py")) if
             (LIB.parent / (name.replace(".", "/") + ".py")).exists() else
             module_imports(LIB.parent / name.replace(".", "/") / "__init__.py") for name in MODULES}
    # A package's __init__ is imported with each of its modules: fold it in, except for the package itself.
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    circles = [name for name in MODULES if name in reach(name)]
    assert not circles, f"import circles through {circles}"


def test_registry_is_a_leaf_and_the_config_is_light():
    assert not any(dep.startswith("lib.methods") for dep in module_imports(LIB / "registry.py"))
    code = "import sys, lib.config; lib.config.PruneConfig(); print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    loaded = json.loads(result.stdout)
    assert "torch" not in loaded and not any(name.startswith("lib.methods") for name in loaded)


def half_magnitude_score(W: torch.Tensor, stats: dict, config) -> torch.Tensor:
    """A method written where a contributor would write one: |W| per row, from no statistics."""
    return W.abs()


@pytest.fixture
def contributed_method():
    """Register a method from this test module, as a new file in lib/methods/ would; remove it afterwards."""
    name = "test_contributed"
    register(Method(name, (), score=half_magnitude_score, help="a method registered from a test module"))
    yield name
    del METHODS[name]


def test_a_method_registered_anywhere_is_a_cli_choice_and_prunes(contributed_method, tiny_model, calib_ids,
                                                                  tiny_model_dir, data_dir, tmp_path):
    assert "a method registered from a test module" in main.build_parser().format_help()
    for sparsity_type in ("unstructured", "2:4"):
        check_end_to_end(tiny_model("llama"), calib_ids, contributed_method, sparsity_type)
    out = tmp_path / "out"
    assert main.main(["--model", str(tiny_model_dir("llama")), "--prune_method", contributed_method, "--nsamples",
                      "2", "--seqlen", "32", "--eval_limit", "2", "--data_dir", str(data_dir), "--save",
                      str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["measured_sparsity"] == pytest.approx(0.5)


def test_help_shows_every_flag_and_every_method():
    text = main.build_parser().format_help()
    for action in main.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings[0]} has no help"
    for name, method in METHODS.items():
        assert f"{name}  " in text and method.help in " ".join(text.split()), name


def test_flag_spellings_and_alias_map_back(tmp_path):
    parser = main.build_parser()
    for flag in ("--neuronrank-max-classes", "--neuronrank_max_classes"):
        assert parser.parse_args([flag, "7"]).neuronrank_max_classes == 7
    args = parser.parse_args(["--sparsity_type", "2:4", "--sel_idf_exp", "0.5", "--shrink"])
    assert (args.sparsity_type, args.sel_idf_exp, args.shrink, args.sparsity_ratio) == ("2:4", 0.5, True, None)
