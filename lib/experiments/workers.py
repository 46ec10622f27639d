"""--executor processes: N worker processes, each running main.main in-process over the runs handed to it (so each
worker loads a model once, as the local executor does), one GPU per worker where there are GPUs.

    statuses = run_processes(tasks, workers=2, gpus=["0", "1"], on_done=print)
    python -m lib.experiments.workers REPLY_FD      # a worker: JSON tasks on stdin, JSON statuses on REPLY_FD

A worker's output goes to each run's run.log. Ctrl-C reaches the workers with the terminal's process group; SIGTERM
to the runner is forwarded to them. Either way every worker stops its run with main.py's one-line message, and the
pool returns with 130 (Ctrl-C) or 143 (SIGTERM) among the statuses.
"""
from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # a worker: Ctrl-C or SIGTERM before its loop starts is a quiet exit
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from lib.experiments.execute import INTERRUPTED, Signals

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 10.0  # after Ctrl-C, how long workers get to stop on their own before SIGTERM


def detect_gpus() -> list[str]:
    """The devices workers are spread over: CUDA_VISIBLE_DEVICES if set, else every CUDA device, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _ignore_ctrl_c() -> None:
    """In the forked child before exec: SIGINT ignored (an ignored signal stays ignored through exec)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Worker:
    """One worker process and its reply pipe."""

    def __init__(self, gpu: str | None) -> None:
        read, write = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        # The worker starts with Ctrl-C ignored, so a Ctrl-C while Python imports (before its own handler is set)
        # cannot print a traceback; a Ctrl-C lost there is covered by the pool's SIGTERM after GRACE_S.
        self.proc = subprocess.Popen([sys.executable, "-m", "lib.experiments.workers", str(write)],
                                     stdin=subprocess.PIPE, pass_fds=(write,), env=env, text=True,
                                     preexec_fn=_ignore_ctrl_c)
        os.close(write)
        self.replies = os.fdopen(read)

    def run(self, argv: list[str], folder: Path) -> int:
        """Hand one run to the worker and wait for its exit status (the worker's own if it died)."""
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "folder": str(folder)}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.replies.readline()
        if line:
            return int(json.loads(line)["status"])
        code = self.proc.wait()
        return 128 - code if code < 0 else (code or 1)  # killed by signal N: 128 + N, as a shell reports it

    def close(self) -> None:
        with_stdin = self.proc.stdin
        try:
            with_stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()
        self.replies.close()


def run_processes(tasks: list[tuple[list[str], Path]], workers: int, gpus: list[str],
                  on_done: Callable[[int, int], None]) -> list[int | None]:
    """Each (main.py argv, run folder) on the first free worker; the exit statuses in task order (None: not run)."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(tasks)):
        todo.put(index)
    statuses: list[int | None] = [None] * len(tasks)
    stop, live = threading.Event(), {}

    def serve(slot: int) -> None:
        worker = None
        while not stop.is_set():
            try:
                index = todo.get_nowait()
            except queue.Empty:
                break
            if worker is None or worker.proc.poll() is not None:
                worker = live[slot] = Worker(gpus[slot % len(gpus)] if gpus else None)
            statuses[index] = worker.run(*tasks[index])
            on_done(index, statuses[index])
            if statuses[index] in INTERRUPTED:
                stop.set()
        if worker is not None:
            worker.close()

    threads = [threading.Thread(target=serve, args=(slot,), daemon=True) for slot in range(min(workers, len(tasks)))]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        _stop_workers(list(live.values()), threads)
    return statuses


def _stop_workers(workers: list[Worker], threads: list[threading.Thread]) -> None:
    """After Ctrl-C (which the workers got too) give them GRACE_S to stop; SIGTERM them at once after a SIGTERM."""
    deadline = time.time() + (0.0 if Signals.terminated else GRACE_S)
    signalled = False
    while any(t.is_alive() for t in threads):
        try:
            if not signalled and time.time() >= deadline:
                for worker in workers:
                    if worker.proc.poll() is None:
                        worker.proc.send_signal(signal.SIGTERM)
                signalled = True
            for thread in threads:
                thread.join(0.2)
        except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: forward it now
            deadline = 0.0


def worker_main(reply_fd: int) -> int:
    """Run the tasks read from stdin one by one, replying with each exit status; stop after an interrupted one."""
    from lib.experiments.execute import run_one

    signal.signal(signal.SIGINT, signal.default_int_handler)
    Signals.install()
    with os.fdopen(reply_fd, "w", buffering=1) as replies:
        try:
            for line in sys.stdin:
                task = json.loads(line)
                status = run_one(task["argv"], Path(task["folder"]), log_to_file=True)
                replies.write(json.dumps({"status": status}) + "\n")
                if status in INTERRUPTED:
                    return status
        except KeyboardInterrupt:  # between runs
            return Signals.status()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
