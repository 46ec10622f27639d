"""--executor slurm: a grid's unfinished runs as one Slurm job array through submitit, one run (or one model's runs)
per array task. Rerunning the same command resubmits what failed or was preempted and leaves alone what is still
queued or running (the job ids are kept in <results_dir>/.slurm/jobs.json; their state comes from sacct).

    jobs = submit(groups, SlurmSettings(partition="gpu", time_min=240, gpus=1), results_dir, cluster="slurm")

Inside a task each run is main.main in-process (lib.experiments.execute.run_one: the model loaded once per task),
its output in the run folder's run.log, submitit's own logs in <results_dir>/.slurm/. A task checks the resume rule
before each run, so a task that Slurm requeues (submitit requeues on preemption and time-outs) skips what it
already finished. SIGTERM stops the current run like Ctrl-C (execute.Signals).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from lib.experiments.execute import INTERRUPTED, Signals, run_one
from lib.experiments.resume import why_unfinished

REPO = Path(__file__).resolve().parents[2]
# sacct states of a job that will still run or is running: rerunning the command must not submit it twice.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED"}


@dataclass(frozen=True)
class SlurmSettings:
    """What the job array asks Slurm for (each task: one run or one model's runs)."""

    partition: str | None = None
    time_min: int = 60
    gpus: int = 1
    cpus: int = 8
    mem_gb: float | None = None
    array_parallelism: int = 64
    account: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # more sbatch options, e.g. {"qos": "high"}

    def parameters(self) -> dict[str, Any]:
        """submitit's slurm_* parameters (AutoExecutor.update_parameters)."""
        params: dict[str, Any] = {"timeout_min": self.time_min, "gpus_per_node": self.gpus,
                                  "cpus_per_task": self.cpus, "slurm_array_parallelism": self.array_parallelism,
                                  "name": "wanda-grid", "slurm_setup": setup_lines()}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        extra = dict(self.extra)
        if self.account:
            extra["account"] = self.account
        if extra:
            params["slurm_additional_parameters"] = extra
        return params


def setup_lines() -> list[str]:
    """The job's environment: this checkout importable, the data folder and the thread count of the submitter."""
    lines = [f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}",
             "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"]
    if os.environ.get("WANDA_DATA_DIR"):
        lines.append(f"export WANDA_DATA_DIR={os.environ['WANDA_DATA_DIR']}")
    return lines


class RunGroup(submitit.helpers.Checkpointable):
    """An array task: main.py runs in order, each skipped when already finished (so a requeued task resumes)."""

    def __call__(self, tasks: list[dict]) -> list[int]:
        Signals.install()
        statuses = []
        for task in tasks:
            folder = Path(task["folder"])
            if why_unfinished(folder / "results.json", task["expected"]) is None:
                statuses.append(0)
                continue
            try:
                statuses.append(run_one(task["argv"], folder, log_to_file=True))
            except KeyboardInterrupt:  # between runs
                statuses.append(Signals.status())
            if statuses[-1] in INTERRUPTED:
                break
        failed = [t["folder"] for t, s in zip(tasks, statuses) if s != 0]
        if failed:  # the task fails in sacct, so the next submission reruns it
            raise RuntimeError(f"{len(failed)} of {len(tasks)} runs failed or were stopped: {' '.join(failed)}; "
                               "see run.log in each")
        return statuses


class JobBook:
    """<results_dir>/.slurm/jobs.json: run folder -> job id of its latest submission."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "jobs.json"
        try:
            self.jobs: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.jobs = {}

    def active(self, run_folder: Path, log_folder: Path) -> str | None:
        """The id of the job that still holds this run (queued or running), else None."""
        job_id = self.jobs.get(str(run_folder))
        if job_id is None:
            return None
        state = submitit.SlurmJob(folder=log_folder, job_id=job_id).state
        return job_id if state.split()[0] in ACTIVE else None

    def record(self, folders: list[Path], job_id: str) -> None:
        self.jobs.update({str(f): job_id for f in folders})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.jobs, indent=1) + "\n")
        os.replace(tmp, self.path)


def submit(groups: list[list[dict]], settings: SlurmSettings, log_folder: Path, cluster: str = "slurm") -> list:
    """One array task per group of tasks ({"argv", "folder", "expected"}); the submitit jobs, in group order."""
    executor = submitit.AutoExecutor(folder=log_folder, cluster=None if cluster == "slurm" else cluster)
    if cluster == "slurm" and executor.cluster != "slurm":
        raise RuntimeError("--executor slurm: no Slurm here (srun is not on PATH)")
    executor.update_parameters(**(settings.parameters() if executor.cluster == "slurm" else
                                  {"timeout_min": settings.time_min}))
    jobs = executor.map_array(RunGroup(), groups)
    book = JobBook(log_folder)
    for job, group in zip(jobs, groups):
        book.record([Path(t["folder"]) for t in group], job.job_id)
    return jobs


def wait(jobs: list) -> list[str | None]:
    """Wait for every job; None for a job that succeeded, else its error's last line."""
    errors = []
    for job in jobs:
        try:
            job.result()
            errors.append(None)
        except Exception as err:  # submitit re-raises the task's error, or reports a killed job
            errors.append(str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
    return errors
