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
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from lib.experiments.execute import INTERRUPTED, Signals, run_one
from lib.experiments.resume import why_unfinished

REPO = Path(__file__).resolve().parents[2]
# sacct states of a job that will still run or is running: rerunning the command must not submit it twice.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED"}


class SlurmError(RuntimeError):
    """Slurm could not be asked (no srun, sbatch refused, sacct silent): one line for the user."""


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

    def active(self, run_folders: list[Path]) -> dict[Path, str]:
        """The runs whose latest job is still queued or running -> that job's id (one sacct call for all)."""
        recorded = {f: self.jobs[str(f)] for f in run_folders if str(f) in self.jobs}
        if not recorded:
            return {}
        arrays = sorted({job_id.split("_")[0] for job_id in recorded.values()})
        try:
            done = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2",
                                   *[arg for a in arrays for arg in ("-j", a)]],
                                  capture_output=True, text=True, timeout=120, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            raise SlurmError(f"sacct could not tell whether jobs {' '.join(arrays)} still run ({err}); rerun "
                               "when it answers") from None
        info = SlurmInfoWatcher().read_info(done.stdout)
        return {f: job_id for f, job_id in recorded.items()
                if (info.get(job_id, {}).get("State") or "UNKNOWN").split()[0] in ACTIVE}

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
        raise SlurmError("--executor slurm: no Slurm here (srun is not on PATH); --slurm_cluster local runs the "
                         "same path without a cluster")
    try:
        executor.update_parameters(**(settings.parameters() if executor.cluster == "slurm" else
                                      {"timeout_min": settings.time_min}))
        jobs = executor.map_array(RunGroup(), groups)
    except (ValueError, subprocess.SubprocessError, submitit.core.utils.FailedSubmissionError,
            submitit.core.utils.FailedJobError) as err:
        text = str(err).strip().splitlines()
        raise SlurmError(f"sbatch refused the job array: {text[0] if text else type(err).__name__}") from None
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
