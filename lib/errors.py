"""The two kinds of failure a run reports in one line, told apart by exit status (lib.cli.run_cli).

ConfigError (exit 2): bad input, the user's to fix: a flag's value, a combination, a path, an output folder.
RunError (exit 3): the run failed on the data or on the model's numbers: a damaged or missing data file, a
non-finite weight, statistic or activation, a Hessian that damping did not make positive definite.
"""
from __future__ import annotations

# Exit statuses of the entry points (128 + the signal for Ctrl-C and SIGTERM, what a shell and Slurm report).
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class ConfigError(ValueError):
    """Bad user input; the message is one line naming the value and what is accepted."""


class RunError(RuntimeError):
    """The run failed on the data or the model's numbers; the message is one line naming where."""
