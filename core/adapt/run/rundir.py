"""The run directory: whether a folder is a run (a marker adapt writes), who is using it (a lock), what
state its run is in, and replacing an earlier run without mixing or destroying anything before the new
one has succeeded.

Only the main process owns the directory; the others learn its decision through `claim_output`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError
from adapt.io import atomic_write_json

MARKER = ".adapt-run.json"  # says "adapt wrote this folder" and what state its run is in
LOCK = ".adapt-run.lock"  # held (flock) by the process training into the folder
LATEST = "latest"  # `--resume` without a path
FINISHED = "finished"
TRAINED = "trained"  # artifacts saved; summary.json may be missing


class RunDirectoryError(AdaptError):
    """The output folder cannot be used as asked (in use, not a run, holds a run that is not to be replaced)."""

    exit_code = 2


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_run(path: Path) -> bool:
    """A folder adapt wrote: it has the marker, or (runs made before markers) a recipe.toml."""
    return (path / MARKER).is_file() or (path / "recipe.toml").is_file()


def run_status(path: Path) -> str:
    """ "finished", "trained" (artifacts saved, summary.json not), or why it stopped ("interrupted", "failed",
    "running": a process died without a word, e.g. SIGKILL or out of memory)."""
    marker = read_marker(path)
    if marker is None:
        return "finished" if (path / "summary.json").is_file() else "running"
    return marker.get("status", "running")


def has_trained_model(path: Path) -> bool:
    """Whether `adapt eval/predict/export` can load the run: its training finished and its artifacts were
    saved, whether or not summary.json could be written afterwards."""
    return run_status(path) in (FINISHED, TRAINED) or (path / "summary.json").is_file()


def describe_stop(path: Path) -> str:
    """ "interrupted by SIGTERM at step 40", "failed at step 12: ...", "stopped at step 7 without a word"."""
    marker = read_marker(path) or {}
    status, step = marker.get("status", "running"), marker.get("step")
    where = f" at step {step}" if step is not None else ""
    if status == "interrupted":
        return f"interrupted by {marker.get('signal', 'a signal')}{where}"
    if status == "failed":
        return f"failed{where}: {marker.get('error', 'see its output')}"
    if status == TRAINED:
        return "trained and saved, but its summary.json was not written"
    return f"stopped{where} without a word (killed, out of memory or a crash)"


def _holder(lock_file: Path) -> str:
    try:
        if lock_file.is_symlink():
            return "another process"
        info = json.loads(lock_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: {info.get('command')}"


def in_use(path: Path) -> bool:
    """Whether a live process trains into `path` now (holds its lock); the lock file is left as it is."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = _open_own_file(path / LOCK, os.O_RDONLY)
    except OSError:
        return False  # no lock file (or a link, which no run of ours holds): nobody ever claimed the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def _open_own_file(path: Path, flags: int) -> int:
    """`os.open(path, flags)` that never follows a link out of the run directory: a lock file that is a symbolic
    link (a copied or tampered folder) is replaced by a file of the run's own, and its target is left untouched."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags | nofollow, 0o644)
    except OSError as exc:
        if not path.is_symlink():
            raise
        if not flags & os.O_CREAT:
            raise FileNotFoundError(str(path)) from exc  # not a lock of ours: nobody holds it
        path.unlink()  # removes the link itself, not what it points to
        return os.open(path, flags | os.O_EXCL | nofollow, 0o644)


@dataclass
class _Lock:
    """An exclusive flock on `folder/.adapt-run.lock`; the kernel releases it when the process dies."""

    file: Path
    fd: int | None = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no protection, but no failure either
            return True
        fd = _open_own_file(self.file, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["adapt", *sys.argv[1:]]) if sys.argv else "adapt",
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class RunDirectory:
    """The main process's hold on the output folder, from the claim to the end of the run."""

    path: Path
    lock: _Lock
    replaces: list[str] = field(default_factory=list)  # earlier runs moved aside, deleted once this one finishes

    def mark(self, status: str, **details: Any) -> None:
        """Record the run's state in the marker (best effort: a full disk must not hide the real error)."""
        record = {
            "format": 1,
            "status": status,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "replaces": self.replaces,
            **details,
        }
        try:
            atomic_write_json(self.path / MARKER, record)
        except OSError:
            if status == "running":
                raise

    def finish(self) -> None:
        """The run succeeded: the runs it replaced go."""
        for aside in self.replaces:
            shutil.rmtree(aside, ignore_errors=True)
        self.replaces = []
        self.mark("finished")

    def release(self) -> None:
        self.lock.release()


@dataclass
class Claim:
    """What `claim_output` decided: resume from `checkpoint`, or start afresh; `finished` when there is
    nothing to do; `notes` to show the user."""

    checkpoint: Path | None = None
    finished: bool = False
    notes: list[str] = field(default_factory=list)
    directory: RunDirectory | None = None  # main process only


def _commands(path: Path, recipe_source: str) -> str:
    # a run stopped during start-up saved no recipe.toml yet: it is continued from the recipe file, not the folder
    where = path if (path / "recipe.toml").is_file() else recipe_source
    return (
        f"continue it with `adapt run {where} --resume`, or start again with "
        f"`adapt run {recipe_source} --set output.overwrite=true`"
    )


def _contains_cwd(path: Path) -> bool:
    here, target = Path.cwd().resolve(), path.resolve()
    return target == here or target in here.parents


def _lock(path: Path) -> _Lock:
    lock = _Lock(path / LOCK)
    if not lock.acquire():
        raise RunDirectoryError(f"output.dir: '{path}' is in use by another adapt run ({_holder(path / LOCK)})")
    return lock


def _move_aside(path: Path) -> str:
    """Rename the earlier run to a hidden sibling; it is deleted only when the new run has finished."""
    if _contains_cwd(path):
        raise RunDirectoryError(
            f"output.dir: '{path}' is (or contains) the working directory, so adapt cannot move the run in it "
            "aside to replace it; run from elsewhere or choose another output.dir"
        )
    aside = path.parent / f".{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    os.replace(path, aside)
    return str(aside)


def _start(path: Path, replaces: list[str]) -> RunDirectory:
    path.mkdir(parents=True, exist_ok=True)
    directory = RunDirectory(path, _lock(path), replaces)
    directory.mark("running", pid=os.getpid())
    return directory


def _replace(path: Path, lock: _Lock) -> RunDirectory:
    """Move the run in `path` aside (keeping the list of runs it was itself replacing) and start afresh."""
    earlier = (read_marker(path) or {}).get("replaces", [])
    aside = _move_aside(path)
    lock.release()
    return _start(path, [*earlier, aside])


def _explicit_checkpoint(resume: str) -> Path:
    from adapt.run.checkpoint import read_info

    checkpoint = Path(resume)
    read_info(checkpoint)  # raises naming what is wrong
    return checkpoint


def claim_output(output_dir: str, *, overwrite: bool, resume: str | None, recipe_source: str) -> Claim:
    """`_claim_output`, with the file system's refusals (read-only, full, a name too long) as one message."""
    try:
        return _claim_output(output_dir, overwrite=overwrite, resume=resume, recipe_source=recipe_source)
    except OSError as exc:
        where = exc.filename or output_dir
        raise RunDirectoryError(
            f"output.dir: cannot write the run into '{output_dir}' ({exc.strerror or exc}: {where}); choose a "
            "folder you can write to"
        ) from None


def _claim_output(output_dir: str, *, overwrite: bool, resume: str | None, recipe_source: str) -> Claim:
    """Decide, on the main process, how this run uses its output folder, and take the lock.

    `resume`: None (a new run), LATEST (the newest complete checkpoint in the folder) or a checkpoint path.
    Never deletes anything: a run to be replaced is moved aside until the new one has finished."""
    from adapt.run.checkpoint import newest_checkpoint

    path = Path(output_dir)
    explicit = _explicit_checkpoint(resume) if resume not in (None, LATEST) else None
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"output.dir: '{path}' exists and is not a directory")
    if not path.exists() or not any(path.iterdir()):
        notes = [f"nothing to resume in '{path}': starting a new run"] if resume == LATEST else []
        return Claim(checkpoint=explicit, notes=notes, directory=_start(path, []))
    if not is_run(path):
        held = sorted(p.name for p in path.iterdir())
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise RunDirectoryError(
            f"output.dir: '{path}' holds files that adapt did not write ({shown}); adapt writes runs only into a "
            "new or empty folder or one of its own runs, and never replaces anything else; choose another output.dir"
        )
    lock = _lock(path)
    status = run_status(path)
    if status == FINISHED:
        if resume is not None:
            lock.release()
            note = (
                f"the run in '{path}' has already finished; nothing to resume "
                "(to train it again: --set output.overwrite=true)"
            )
            return Claim(finished=True, notes=[note])
        if overwrite:
            return Claim(directory=_replace(path, lock))
        lock.release()
        raise RunDirectoryError(
            f"output.dir: '{path}' already holds a finished run; choose another directory or replace it with "
            "--set output.overwrite=true (the earlier run is kept aside until the new one finishes)"
        )
    if resume is not None:
        checkpoint = explicit or newest_checkpoint(path)
        if checkpoint is None:
            note = f"no complete checkpoint in '{path}' ({describe_stop(path)}): starting from the beginning"
            return Claim(notes=[note], directory=_replace(path, lock))
        directory = RunDirectory(path, lock, (read_marker(path) or {}).get("replaces", []))
        directory.mark("running", pid=os.getpid(), resumed_from=str(checkpoint))
        return Claim(checkpoint=checkpoint, directory=directory)
    if overwrite:
        return Claim(directory=_replace(path, lock))
    lock.release()
    newest = newest_checkpoint(path)
    saved = f"newest checkpoint: {newest.name}" if newest else "no checkpoint"
    raise RunDirectoryError(
        f"output.dir: '{path}' holds an unfinished run ({describe_stop(path)}; {saved}); "
        + _commands(path, recipe_source)
    )
