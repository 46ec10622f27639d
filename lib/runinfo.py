"""What a run records about itself (package versions, git commit, peak memory) and how it writes files."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import shutil
import subprocess
import tempfile
from typing import Callable
from pathlib import Path

from lib.config import ConfigError

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "gguf", "numpy", "lm_eval", "peft")


def write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; results are meant to be shared and read
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model_atomic(save_weights: Callable[[Path], None], tokenizer, target: Path) -> None:
    """Model and tokenizer into a temporary sibling of target, then renamed over it: a killed or failed save
    leaves only a hidden '.name.*' folder, never a target that looks finished (weights without a tokenizer, or
    new weights beside an earlier run's results.json). An earlier folder at target is replaced as a whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving.", dir=target.parent))
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent)) / target.name
    try:
        save_weights(tmp)  # model.save_pretrained, or lib.offload.LayerStore.save_pretrained
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError as err:
        raise ConfigError(f"could not write the model to '{target}' ({err.strerror or err}); nothing was "
                          "written there") from None
    finally:
        if old.exists() and not target.exists():  # the new folder never arrived: put the earlier one back
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old.parent, ignore_errors=True)


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def git_commit() -> str | None:
    """HEAD of the repository this package lives in, with '-dirty' when tracked files changed."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
