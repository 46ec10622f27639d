"""The wiring a contributor relies on: every lib module imports alone, no import circles, the config is light,
and a method, an add-on of each kind, or a settings section registered anywhere (here, inside this test module)
is a CLI choice and prunes end to end.

    python -m pytest -q tests/test_architecture.py
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import main
from lib import PruneConfig, prune_model
from lib.config import ConfigError, Settings, SECTIONS, register_settings, setting
from lib.registry import (ADDONS, METHODS, LayerRatioPolicy, LinearMask, MaskRefiner, Method, WeightReconstruction,
                          register, register_addon)
from lib.models import find_decoder_layers, find_linears
from lib.sparsity import check_sparsity
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


def test_registries_and_config_import_no_plugin():
    # A registry never imports its plug-ins, and the settings module imports neither a plug-in nor torch (the
    # plug-ins register their methods, add-ons and settings sections when lib.plugins imports them).
    for module in ("registry.py", "config.py", "errors.py"):
        deps = module_imports(LIB / module)
        assert not any(dep.startswith(("lib.methods", "lib.addons", "lib.plugins")) for dep in deps), module
    assert "import torch" not in (LIB / "config.py").read_text()
    # Importing the settings and the CLI helpers loads no torch (an entry point sets its signal handlers first);
    # the plug-ins, and torch, load when a PruneConfig is built or its flags are listed.
    code = "import sys, lib.config, lib.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


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


# ---------------------------------------------------------------- add-ons and settings as plug-ins


@dataclass(frozen=True)
class RampSettings(Settings):
    """A contributed policy's own setting, declared where the policy is."""

    group: ClassVar[str] = "ramp (--layer_ratios test_ramp)"
    ramp_step: float = setting(0.1, "sparsity added per decoder layer", bounds="[0, 0.2]")


class Ramp(LayerRatioPolicy):
    """Sparsity rising by ramp_step per layer around the target; needs no calibration pass."""

    name = "test_ramp"
    help = "a layer-ratio policy registered from a test module"

    def ratios(self, walk, method, context, layers):
        middle = (layers - 1) / 2
        self.ratios_given = [self.config.sparsity_ratio + self.config.ramp_step * (i - middle) for i in range(layers)]
        return self.ratios_given

    def results(self):
        return {"test_ramp_ratios": self.ratios_given}


class KeepFirstColumn(MaskRefiner):
    """Never prunes column 0 of a row: swaps it for the row's lowest-score kept weight."""

    name = "test_keep_first"
    help = "a mask refiner registered from a test module"

    def refine(self, item: LinearMask) -> torch.Tensor:
        mask = item.mask.clone()
        rows = mask[:, 0].nonzero().flatten()
        kept_scores = item.scores[rows].masked_fill(mask[rows], float("inf"))
        kept_scores[:, 0] = float("inf")
        mask[rows, kept_scores.argmin(dim=1)] = True
        mask[rows, 0] = False
        return mask


@dataclass(frozen=True)
class ReconstructSettings(Settings):
    """The weight-reconstruction kind's selector, declared by the first module that offers one (as issue 20's will)."""

    group: ClassVar[str] = "add-ons"
    reconstruct: str = setting("none", "weight reconstruction after the mask: 'none' or a registered one")


class Halve(WeightReconstruction):
    """Halves the kept weights: a post-step that sees the dense weights, the final mask and the statistics."""

    name = "test_halve"
    help = "a weight reconstruction registered from a test module"
    seen: list = []

    def reconstruct(self, W, mask, stats):
        Halve.seen.append(("scaler_row" in stats, bool((W[mask] != 0).all())))  # the dense weights, not yet zeroed
        return W.masked_fill(mask, 0) * 0.5


@pytest.fixture
def contributed_addons():
    """Register a section and one add-on of three kinds from this test module; remove them afterwards."""
    register_settings(RampSettings)
    owned = any("reconstruct" in section.__dataclass_fields__ for section in SECTIONS)  # lib/addons/admm.py's
    if not owned:
        register_settings(ReconstructSettings)
    for addon in (Ramp, KeepFirstColumn, Halve):
        register_addon(addon)
    yield
    SECTIONS.remove(RampSettings)
    if not owned:
        SECTIONS.remove(ReconstructSettings)
    for addon in (Ramp, KeepFirstColumn, Halve):
        del ADDONS[addon.name]


def test_a_layer_ratio_policy_and_its_setting_registered_anywhere_prune(contributed_addons, tiny_model, calib_ids,
                                                                       tiny_model_dir, data_dir, tmp_path):
    config = PruneConfig(prune_method="magnitude", sparsity_ratio=0.5, layer_ratios="test_ramp", ramp_step=0.2)
    model = tiny_model("llama")
    report = prune_model(model, calib_ids, config)
    assert report.results()["test_ramp_ratios"] == pytest.approx([0.4, 0.6])
    assert check_sparsity(model)[1] == pytest.approx([0.4, 0.6], abs=1e-3)
    with pytest.raises(ConfigError, match=r"ramp_step 0.5 must be in \[0, 0.2\]"):
        PruneConfig(ramp_step=0.5)
    help_text = main.build_parser().format_help()
    assert "--ramp_step" in help_text and "ramp (--layer_ratios test_ramp)" in help_text
    assert "a layer-ratio policy registered from a test module" in " ".join(help_text.split())
    out = tmp_path / "out"
    assert main.main(["--model", str(tiny_model_dir("llama")), "--layer_ratios", "test_ramp", "--ramp_step", "0.1",
                      "--nsamples", "2", "--seqlen", "32", "--eval_limit", "2", "--data_dir", str(data_dir),
                      "--save", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_ramp_ratios"] == pytest.approx([0.45, 0.55]) and results["config"]["ramp_step"] == 0.1


def test_a_mask_refiner_registered_anywhere_changes_the_mask(contributed_addons, tiny_model, calib_ids):
    model = tiny_model("llama")
    prune_model(model, calib_ids, PruneConfig(prune_method="wanda", refine="test_keep_first", nsamples=4))
    for layer in find_decoder_layers(model):
        for linear in find_linears(layer).values():
            assert (linear.weight[:, 0] != 0).all()
            assert ((linear.weight == 0).sum(dim=1) == linear.in_features // 2).all()


def test_a_weight_reconstruction_registered_anywhere_sees_the_mask(contributed_addons, tiny_model, calib_ids):
    dense, model = tiny_model("llama"), tiny_model("llama")
    Halve.seen.clear()
    prune_model(model, calib_ids, PruneConfig(prune_method="wanda", nsamples=4, reconstruct="test_halve"))
    assert Halve.seen and all(has_stats and dense for has_stats, dense in Halve.seen)
    for a, b in zip(find_decoder_layers(dense), find_decoder_layers(model)):
        for name, linear in find_linears(b).items():
            kept = linear.weight != 0
            torch.testing.assert_close(linear.weight[kept], find_linears(a)[name].weight[kept] * 0.5)


def test_unknown_addon_names_are_one_line_errors(capsys, tmp_path):
    assert main.main(["--model", str(tmp_path / "absent"), "--refine", "dsnt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown refine 'dsnt' (did you mean 'dsnot'?); choose from ['none', 'dsnot']"]


def test_debug_shows_the_traceback_and_the_cause(capsys, tmp_path, monkeypatch):
    argv = ["--model", str(tmp_path / "absent")]
    assert main.main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main.main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: model path")
    monkeypatch.setenv("WANDA_DEBUG", "1")
    assert main.main(argv) == 2 and "Traceback" in capsys.readouterr().err


def test_no_function_in_lib_or_main_is_over_60_lines():
    # The codebase's rule (STYLE.md, the developers' guide): a longer function is split where its phases are.
    long = []
    for path in [*LIB.rglob("*.py"), LIB.parent / "main.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(LIB.parent)}:{node.lineno} {node.name}")
    assert not long, long


def test_the_readme_tables_list_every_registered_method_and_addon():
    import registry_table

    readme = (LIB.parent / "README.md").read_text()
    assert registry_table.readme_with_tables(readme) == readme, \
        "README.md's method/add-on tables are stale: run scripts/registry_table.py --write"
    for name in [*METHODS, *ADDONS]:
        assert f"| `{name}` |" in readme


def test_issue_20s_algorithms_fit_the_addon_kinds(tiny_model, calib_ids):
    # The ADMM update (lib/reconstruct.py) as a WeightReconstruction reading the one Hessian collector, and the
    # depth ramp (lib/depth_ramp.py) as a LayerRatioPolicy: each a few lines against the registry's interface.
    from lib.collectors import InputHessian
    from lib.depth_ramp import depth_ramp_ratios
    from lib.reconstruct import admm_system_from_stats, admm_update, row_objective

    class Admm(WeightReconstruction):
        name, help, collectors = "test_admm", "ADMM re-fit of the kept weights", (InputHessian,)
        errors: list = []

        def reconstruct(self, W, mask, stats):
            hessian = stats.get("hessian", None)  # the first linear of a shared input (q, o, gate, down) has it
            new = admm_update(W, mask, admm_system_from_stats(stats))
            if hessian is not None:
                masked = W.masked_fill(mask, 0)
                Admm.errors.append((row_objective(W - new, hessian).sum(), row_objective(W - masked, hessian).sum()))
            return new

    class Ramp(LayerRatioPolicy):
        name, help = "test_depth_ramp", "sparsity rising with depth (ATP)"

        def ratios(self, walk, method, context, layers):
            return depth_ramp_ratios(layers, self.config.sparsity_ratio, 0.1)

    owned = any("reconstruct" in section.__dataclass_fields__ for section in SECTIONS)  # lib/addons/admm.py's
    if not owned:
        register_settings(ReconstructSettings)
    register_addon(Admm)
    register_addon(Ramp)
    try:
        model = tiny_model("llama")
        config = PruneConfig(prune_method="wanda", nsamples=8, reconstruct="test_admm", layer_ratios="test_depth_ramp")
        prune_model(model, calib_ids, config)
    finally:
        if not owned:
            SECTIONS.remove(ReconstructSettings)
        del ADDONS["test_admm"], ADDONS["test_depth_ramp"]
    per_layer = check_sparsity(model)[1]  # floor(ratio * width) per row: at most 1/64 under the ratio
    assert all(ratio - 1 / 64 <= got <= ratio for ratio, got in zip([0.45, 0.55], per_layer))
    # The post-step saw the dense weights and the Hessian: the re-fit lowers the layers' objective ||X (W - W')||^2
    # against the masked weights' (ADMM's own guarantee, per row on its damped system, is tested in test_reconstruct).
    assert len(Admm.errors) == 8
    assert sum(new for new, _ in Admm.errors) < 0.99 * sum(masked for _, masked in Admm.errors)
