"""Working memory of the ADMM update and gradual ADMM per linear (a benchmark, not a test): computed for
LLaMA-2-70B's shapes, and the same count checked against peak RSS measured on this CPU at 1/--scale of them.

    .venv/bin/python bench/bench_reconstruct_memory.py [--scale 8] [--shapes down_proj,gate_proj]

Count (lib/reconstruct.py): one input's system holds two [in, in] float32 matrices (the Cholesky factor of the
damped, normalised Hessian and its inverse; building it from the collector's Hessian never holds more than two);
the fixed-mask update holds five [out, in] float32 buffers at its peak (W0 normalised, the fit target, W, U, V)
and two [out, in] bool masks; gradual ADMM adds, while it chooses a mask, the score [out, in] float32 and the
row sort's values and int64 indices (three more float32 equivalents) plus the score function's own transients
(Wanda's: two). The layer's weight itself is not counted (it is resident anyway).

Measured: in a fresh subprocess per phase, MALLOC_MMAP_THRESHOLD_ pinned so freed buffers leave RSS, the rise of
the kernel's high-water mark (reset through /proc/self/clear_refs) above the RSS before the phase. Shapes are
LLaMA-2-70B's divided by --scale in both dimensions, so every [in, in] and [out, in] term is --scale^2 smaller.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from lib.reconstruct import admm_system_from_stats, admm_update, gradual_admm  # noqa: E402
from lib.sparsity import make_mask  # noqa: E402

GIB = 2**30
# LLaMA-2-70B: hidden 8192, MLP 28672, 64 query heads and 8 key/value heads of 128 -> (out, in) per linear.
LLAMA2_70B = {"q_proj": (8192, 8192), "k_proj": (1024, 8192), "v_proj": (1024, 8192), "o_proj": (8192, 8192),
              "gate_proj": (28672, 8192), "up_proj": (28672, 8192), "down_proj": (8192, 28672)}
FLOAT_BUFFERS = {"system": 0, "update": 5, "gradual": 5 + 1 + 3 + 2}  # [out, in] float32 equivalents at the peak


def computed_bytes(phase: str, out: int, width: int) -> int:
    """The count above: bytes alive at the phase's peak, for a linear of shape [out, in=width]."""
    if phase == "system":
        return 2 * width * width * 4
    return 2 * width * width * 4 + FLOAT_BUFFERS[phase] * out * width * 4 + 2 * out * width


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(phase: str, out: int, width: int) -> dict:
    """One phase on random data in this process -> {'measured': bytes alive at its peak, as counted above}.

    The high-water mark's rise above the RSS before the phase, plus what the count includes that was resident
    before it: the Hessian handed to the system (system), the system's two [in, in] matrices (update, gradual).
    """
    torch.manual_seed(0)
    X = torch.randn(2 * width, width)
    W = torch.randn(out, width)
    stats = {"hessian": X.T @ X}
    del X
    system = None if phase == "system" else admm_system_from_stats(stats)
    mask = make_mask(W.abs(), 0.5) if phase == "update" else None
    resident = width * width * 4 * (1 if phase == "system" else 2)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    if phase == "system":
        admm_system_from_stats(stats)
    elif phase == "update":
        admm_update(W, mask, system)
    else:
        norm = system.scale.unsqueeze(0)
        gradual_admm(W, system, 0.5, lambda V: V.abs() * norm)
    return {"measured": (rss_kib("VmHWM") - before) * 1024 + resident}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--shapes", default="down_proj,gate_proj")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        torch.set_num_threads(1)
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1")
    print(f"# computed per linear at LLaMA-2-70B shapes; measured at 1/{args.scale} of each dimension on this CPU "
          "(peak RSS rise, MALLOC_MMAP_THRESHOLD_=131072)")
    print(f"{'linear':<10} {'[out, in]':>14} {'phase':<8} {'70B computed GiB':>17} "
          f"{'1/' + str(args.scale) + ' computed MiB':>19} {'measured MiB':>13} {'ratio':>6}")
    for name in args.shapes.split(","):
        out, width = LLAMA2_70B[name]
        small = (out // args.scale, width // args.scale)
        for phase in FLOAT_BUFFERS:
            run = subprocess.run([sys.executable, __file__, "--child", phase, str(small[0]), str(small[1])],
                                 env=env, capture_output=True, text=True, check=True)
            measured = json.loads(run.stdout.strip().splitlines()[-1])["measured"]
            predicted = computed_bytes(phase, *small)
            print(f"{name:<10} {str([out, width]):>14} {phase:<8} {computed_bytes(phase, out, width) / GIB:>17.2f} "
                  f"{predicted / 2**20:>19.1f} {measured / 2**20:>13.1f} {measured / predicted:>6.2f}")


if __name__ == "__main__":
    main()
