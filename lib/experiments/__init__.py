"""Experiments as data: a grid file (experiments/*.toml) expands into main.py runs, each skipped when finished
(lib.experiments.resume) and executed in this process, in worker processes, or as a Slurm job array.

    python scripts/experiment.py run experiments/addons.toml [--executor local|processes|slurm]
"""
