"""What a run records about itself (package versions, git commit, peak memory) and how it writes files."""
from __future__ import annotations

import errno
import functools
import importlib.metadata
import json
import logging
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Callable
from pathlib import Path

from lib.config import ConfigError

logger = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "gguf", "numpy", "lm_eval", "peft")


def write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file and rename, so readers never see half a file."""
    write_atomic_all({path: text})


def write_atomic_all(files: dict[Path, str]) -> None:
    """Write every file to a temporary sibling first, then rename them in the order given: a full disk or an
    interrupt leaves none of them changed (renames need no space), and the last one marks them all done."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            temps.append((tmp, path))
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; results are meant to be shared and read
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


def keep_apart(path: Path, settings: dict, keys: tuple[str, ...]) -> Path | None:
    """An earlier results file at path that records other settings (any of keys differs) is renamed to
    '<stem>.<its mtime>.json', so a run never replaces another run's results -> the new name, or None."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or damaged by a kill: nothing worth keeping
        return None
    if not isinstance(earlier, dict) or all(earlier.get(k) == settings.get(k) for k in keys):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(path.stat().st_mtime))
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while kept.exists():
        kept, n = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}"), n + 1
    os.replace(path, kept)
    return kept


# A folder this tool wrote (a saved model, a LoRA adapter) holds this file; only such a folder is ever replaced.
MARKER = ".written-by-wanda-prune"


def temp_sibling(target: Path, kind: str) -> Path:
    """A new hidden folder next to target, '.{name}.{kind}.{host}-{pid}.XXXX': a rerun can tell the leftovers of
    a killed run (its process is gone) from those of a run still writing (remove_stale_temps)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}.{socket.gethostname()}-{os.getpid()}.",
                                 dir=target.parent))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(target: Path, prefix: str | None = None) -> list[Path]:
    """Remove temporary siblings of target (temp_sibling's, or any folder named '{prefix}{host}-{pid}.*') left by
    a process of this host that no longer runs (SIGKILL, the OOM killer, a node reboot) -> what was removed.
    Other hosts' leftovers on a shared file system are left alone: their process may still be writing."""
    host = socket.gethostname()
    pattern = re.compile(re.escape(prefix) if prefix else rf"\.{re.escape(target.name)}\.(saving|old|converting)\.")
    removed = []
    parent = target.parent if prefix is None else target
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        owner = re.match(rf"{re.escape(host)}-(\d+)\.", entry.name[match.end():]) if match else None
        if owner and int(owner.group(1)) != os.getpid() and not _process_alive(int(owner.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        logger.warning("removed %d leftover(s) of a killed run: %s", len(removed), ", ".join(map(str, removed)))
    return removed


def write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError, and safetensors' own SafetensorError (a full disk there is not an
    OSError)."""
    from safetensors import SafetensorError

    return OSError, SafetensorError


def write_failure(what: str, path: Path, err: BaseException, needed: int | None = None) -> ConfigError:
    """One line for a failed write: the path, the reason, and on a full disk the space needed and free."""
    text = str(err).strip()
    reason = getattr(err, "strerror", None) or (text.splitlines()[0] if text else type(err).__name__)
    full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err) or "StorageFull" in str(err)
    if full:
        free = free_bytes(path)
        need = f"needs about {needed / 2**30:.2f} GiB, " if needed else ""
        reason = f"No space left on device: {need}{free / 2**30:.2f} GiB free there"
    return ConfigError(f"could not write {what} to '{path}' ({reason}); nothing was written there")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds path (or its nearest existing parent)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def save_model_atomic(save_weights: Callable[[Path], None], tokenizer, target: Path, needed: int | None = None,
                      record: dict | None = None) -> None:
    """Model and tokenizer into a temporary sibling of target, then renamed over it: a killed or failed save
    leaves only a hidden '.name.*' folder (removed by the next save to target, or at once on Ctrl-C, SIGTERM or
    a full disk), never a target that looks finished (weights without a tokenizer, or new weights beside an
    earlier run's results.json). An earlier folder at target is replaced as a whole; check_model_target has made
    sure this tool wrote it (MARKER, which the new folder gets too, with record in it)."""
    remove_stale_temps(target)
    tmp = temp_sibling(target, "saving")
    old = temp_sibling(target, "old") / target.name
    try:
        save_weights(tmp)  # model.save_pretrained, lib.offload.LayerStore.save_pretrained, an adapter's save
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(record or {}, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except write_errors() as err:
        raise write_failure("the model", target, err, needed) from None
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


@functools.lru_cache(maxsize=None)
def git_commit() -> str | None:
    """HEAD of the repository this package lives in, with '-dirty' when tracked files changed, as it was at the first
    call in this process (main.main calls it at start-up): the code a process imported is the code it runs, so a
    commit made while an experiment worker is running must not be recorded by that worker's later runs."""
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
