"""Zero-shot accuracy of an in-memory (pruned) model through lm-eval 0.4's Python API, offline when data is local.

    results = eval_zero_shot(model, tokenizer, list(DEFAULT_TASKS), limit=200, batch_size=8,
                             data_dir=Path("../shared/data"))
    print(format_zero_shot_table(results))

With a data folder, each standard task name (``boolq``) runs as its local twin (``boolq_local``) from
``<data_dir>/zeroshot/tasks/*_local.yaml``; those YAMLs name their data files through the token
``ZEROSHOT_DATA_DIR``, so they are copied to a temporary folder with the token replaced by the folder's
absolute path (../shared/data/zeroshot/README.md). A task with no local twin runs from the hub unless
the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or cannot be reached; then it is skipped
with one warning and recorded as ``{"skipped": reason}``, so a long pruning run is never lost to it.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)

# Wanda's seven (Table 2 of the paper).
DEFAULT_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
LOCAL_SUFFIX = "_local"
DATA_TOKEN = "ZEROSHOT_DATA_DIR"
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")

_TASK_LINE = re.compile(r"^task:\s*['\"]?([\w.-]+)['\"]?\s*$", re.MULTILINE)


@dataclass(frozen=True)
class TaskPlan:
    """Where each requested task will come from: local twin, hub, or nowhere (with the reason)."""

    local: dict[str, str] = field(default_factory=dict)    # standard name -> local task name
    hub: list[str] = field(default_factory=list)           # standard names to load from the hub
    skipped: dict[str, str] = field(default_factory=dict)  # standard name -> reason
    zeroshot_dir: Path | None = None                        # the folder holding tasks/ and the data


def zeroshot_dir(data_dir: str | Path | None) -> Path | None:
    """The folder with tasks/*_local.yaml: <data_dir>/zeroshot, or data_dir itself; None if neither."""
    if data_dir is None:
        return None
    for candidate in (Path(data_dir) / "zeroshot", Path(data_dir)):
        if (candidate / "tasks").is_dir():
            return candidate.resolve()
    return None


def find_local_tasks(zs_dir: Path | None) -> dict[str, Path]:
    """standard task name -> its *_local YAML, read from each YAML's `task:` line (not its file name)."""
    if zs_dir is None:
        return {}
    found = {}
    for yaml_path in sorted((zs_dir / "tasks").glob("*.yaml")):
        match = _TASK_LINE.search(yaml_path.read_text())
        if match and match.group(1).endswith(LOCAL_SUFFIX):
            found[match.group(1)[: -len(LOCAL_SUFFIX)]] = yaml_path
    return found


def hub_offline() -> bool:
    """True when the user (or the test suite) has switched the hub off through the usual variables."""
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags):
        return True
    try:  # the libraries read the variables once at import; honour that too
        import datasets.config
        import huggingface_hub.constants
        return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return False


def plan_tasks(tasks: list[str], data_dir: str | Path | None) -> TaskPlan:
    """Decide, without loading anything, where each task comes from. Cheap: call it before pruning to warn early."""
    zs_dir = zeroshot_dir(data_dir)
    local_yamls = find_local_tasks(zs_dir)
    offline = hub_offline()
    plan = TaskPlan(zeroshot_dir=zs_dir)
    for name in dict.fromkeys(tasks):  # keep order, drop repeats
        if name in local_yamls:
            plan.local[name] = name + LOCAL_SUFFIX
        elif name.endswith(LOCAL_SUFFIX) and name[: -len(LOCAL_SUFFIX)] in local_yamls:
            plan.local[name[: -len(LOCAL_SUFFIX)]] = name
        elif offline:
            if zs_dir is not None:
                where = f"no task '{name}{LOCAL_SUFFIX}' in {zs_dir / 'tasks'}"
            elif data_dir is not None:
                where = f"no zeroshot/tasks folder in data_dir {data_dir}"
            else:
                where = "no local data (no --data_dir or WANDA_DATA_DIR)"
            plan.skipped[name] = f"{where}, and the hub is switched off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)"
        else:
            plan.hub.append(name)
    return plan


def unknown_hub_tasks(names: list[str]) -> dict[str, str]:
    """{name: ' (did you mean ...?)'} for every name lm-eval does not know (indexing its task files takes seconds,
    so only called when tasks would come from the hub): such a task would be skipped after the whole run."""
    from lm_eval.tasks import TaskManager

    from lib.config import suggest

    known = set(TaskManager().all_tasks)
    return {name: suggest(name, sorted(known)) for name in names if name not in known}


def _materialise_local_tasks(zs_dir: Path, dest: Path) -> None:
    """Copy zs_dir/tasks into dest with the data token replaced by zs_dir's absolute path (never write into zs_dir)."""
    for src in (zs_dir / "tasks").iterdir():
        if not src.is_file():
            continue
        if src.suffix in {".yaml", ".yml"}:
            lines = src.read_text().splitlines(keepends=True)
            # Comments mention the token too; only the config lines are rewritten.
            (dest / src.name).write_text("".join(line if line.lstrip().startswith("#")
                                                 else line.replace(DATA_TOKEN, str(zs_dir)) for line in lines))
        else:
            shutil.copyfile(src, dest / src.name)  # e.g. zeroshot_local_utils.py for !function hooks


def _number(value: object) -> float | None:
    """lm-eval writes 'N/A' for a stderr it could not compute; keep only real numbers."""
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _extract(task_results: dict, n_samples: dict | None, source: str) -> dict:
    """lm-eval's {'acc,none': ..} for one task -> {acc, acc_stderr, acc_norm, acc_norm_stderr, n, task}."""
    row: dict = {"task": source}
    for metric in METRICS:
        row[metric] = _number(task_results.get(f"{metric},none"))
    row["n"] = int(n_samples["effective"]) if n_samples and "effective" in n_samples else None
    return row


def _load_tasks(task_manager, tasks: list[str], plan: TaskPlan, results: dict) -> tuple[dict[str, str], set]:
    """Load each task on its own, so one unreachable dataset skips one task instead of the whole run -> ({task:
    lm-eval source}, the tasks' default num_fewshot values); a skipped task's reason goes into results."""
    runnable: dict[str, str] = {}
    fewshot_defaults = set()
    for name in tasks:
        source = plan.local.get(name, name if name in plan.hub else None)
        if source is None or name in runnable:
            continue
        try:
            loaded = task_manager.load([source])
        except Exception as err:  # noqa: BLE001 - any load failure (hub unreachable, bad YAML, missing file) skips the task
            reason = f"lm-eval could not load '{source}': {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            logger.warning("zero-shot: skipping task '%s': %s", name, reason)
            results[name] = {"skipped": reason}
            continue
        runnable[name] = source
        fewshot_defaults |= {t.get_config("num_fewshot") for t in loaded["tasks"].values()}
    return runnable, fewshot_defaults


def eval_zero_shot(model: nn.Module, tokenizer, tasks: list[str], limit: int | None, batch_size: int | str,
                   data_dir: Path | None, plan: TaskPlan | None = None) -> dict[str, dict]:
    """Zero-shot lm-eval on the in-memory model -> {standard task name: {acc, acc_stderr, acc_norm, acc_norm_stderr, n, task}}.

    `task` is the lm-eval task that actually ran (e.g. 'boolq_local'); metrics lm-eval does not report for a
    task (acc_norm for boolq) are None. A task that could not be loaded is {"skipped": reason} and logged once.
    `limit` caps the items per task (lm-eval takes the first `limit` documents). Pass the `plan` that
    plan_tasks() made (and warned about) before pruning to keep to one warning per skipped task.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    warned = plan is not None
    plan = plan if plan is not None else plan_tasks(tasks, data_dir)
    results: dict[str, dict] = {}
    for name, reason in plan.skipped.items():
        if not warned:
            logger.warning("zero-shot: skipping task '%s': %s", name, reason)
        results[name] = {"skipped": reason}

    with tempfile.TemporaryDirectory(prefix="zeroshot_tasks_") as tmp:
        if plan.local:
            _materialise_local_tasks(plan.zeroshot_dir, Path(tmp))
        # Indexing lm-eval's ~15k built-in YAMLs takes seconds; skip it when every task is local.
        task_manager = TaskManager(include_path=tmp if plan.local else None, include_defaults=bool(plan.hub))

        runnable, fewshot_defaults = _load_tasks(task_manager, tasks, plan, results)
        if not runnable:
            logger.warning("zero-shot: no task could be loaded; nothing evaluated")
            return results

        # Passing num_fewshot=0 makes lm-eval warn once per task; only do it when a task would otherwise be few-shot.
        num_fewshot = 0 if fewshot_defaults - {None, 0} else None
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        logger.info("zero-shot: evaluating %s (limit %s per task)", ", ".join(runnable.values()), limit)
        output = lm_eval.simple_evaluate(model=lm, tasks=list(runnable.values()), task_manager=task_manager,
                                         num_fewshot=num_fewshot, limit=limit, log_samples=False)

    for name, source in runnable.items():
        task_results = output["results"].get(source)
        if task_results is None:
            results[name] = {"skipped": f"lm-eval returned no results for '{source}'"}
            logger.warning("zero-shot: task '%s' produced no results", name)
            continue
        results[name] = _extract(task_results, output.get("n-samples", {}).get(source), source)
    # Requested order, skipped ones included where they were asked for.
    return {name: results[name] for name in dict.fromkeys(tasks) if name in results}


def format_zero_shot_table(results: dict[str, dict]) -> str:
    """A plain-text table: task, items, acc ± stderr, acc_norm ± stderr, and the mean acc over evaluated tasks."""
    def cell(value: float | None, stderr: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.4f} ± {stderr:.4f}" if stderr is not None else f"{value:.4f}"

    header = ("task", "lm-eval task", "n", "acc", "acc_norm")
    rows = []
    accs = []
    for name, row in results.items():
        if "skipped" in row:
            rows.append((name, "skipped", "-", "-", "-"))
            continue
        rows.append((name, row.get("task", name), str(row["n"]) if row["n"] is not None else "-",
                     cell(row["acc"], row["acc_stderr"]), cell(row["acc_norm"], row["acc_norm_stderr"])))
        if row["acc"] is not None:
            accs.append(row["acc"])
    if accs:
        rows.append((f"mean acc ({len(accs)} tasks)", "", "", f"{sum(accs) / len(accs):.4f}", ""))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
