"""The run folder: what an earlier run left there, whether this run may use it, and
the recipe it records.

A start is decided in two steps so that nothing is lost by a run that fails to start:
:func:`check_run_folder` only refuses (it writes nothing) and runs before the recipe,
data, model and batch arithmetic are checked; :func:`open_run_folder` creates the
folder and, under ``--overwrite``, removes the earlier run, once all of that passed.
One trainer at a time: :class:`FolderLock` refuses a second one on the same folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gssl_fast import checkpoint
from gssl_fast.checkpoint import STAGES_DIR
from gssl_fast.run.loaders import SKIPPED_FILE
from pipelines.errors import UserError

CONFIG, HISTORY, METRICS = "config.toml", "config_history", "metrics.jsonl"
# Everything a run writes into its folder, removed by --overwrite: checkpoints, logs, the
# recipe and its history, converted data (.beton), stages, a method's files (FixMatch's
# labeled subset), skipped images, tracker events and the report drawn from the old run.
RUN_OUTPUTS = (checkpoint.CHECKPOINT_DIR, METRICS, CONFIG, HISTORY, "data", checkpoint.STAGES_DIR, "labeled_indices.txt",
               SKIPPED_FILE, "tensorboard", "report")


# The trainer's lock; kept by --overwrite, which must not free the folder for another trainer.
LOCK = ".trainer.lock"
HELD = (errno.EACCES, errno.EAGAIN)  # what lockf says when another process holds the lock


class FolderLock:
    """The run folder for one trainer at a time: the main process holds a POSIX lock on
    ``<run>/.trainer.lock`` (which names the holder) until the run ends. The kernel drops
    it when the process dies, however it dies, and a forked worker never holds it. A
    second trainer on the folder (another terminal, a ladder row whose job still runs)
    is refused, in every one of its processes, before it changes anything: the lock is
    taken on entry where an earlier trainer left its file, and the file is written only
    once the folder is open (:meth:`take` with ``create``)."""

    def __init__(self, run_dir: Path, accelerator):
        self.run_dir, self.accelerator, self.file = Path(run_dir), accelerator, None
        self.unguarded = False  # the file system does not lock files

    def __enter__(self) -> "FolderLock":
        self.take(create=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing the file drops the lock
            self.file = None

    def take(self, *, create: bool = True) -> None:
        """Takes the lock unless held (``create``: making the file, and naming this
        process in it); every process calls it, and each raises the UserError when
        another trainer holds it."""
        refused = None
        if self.accelerator.is_main_process:
            refused = self._lock(create)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            refused = broadcast_object_list([refused], from_process=0)[0]
        if refused:
            raise UserError(refused)

    def _lock(self, create: bool) -> str | None:
        import socket

        path = self.run_dir / LOCK
        if self.unguarded:
            return None
        if self.file is None:
            if not (create or path.is_file()):
                return None  # no trainer has opened this folder
            f = open(path, "a+" if create else "r+", encoding="utf-8")
            try:
                holder = _held_by(f)
            except OSError as e:  # a file system without locks: train unguarded, and say so once
                f.close()
                self.unguarded = True
                print(f"warning: {path}: the file system does not lock files ({e.strerror}); nothing stops "
                      "a second trainer on this folder", file=sys.stderr, flush=True)
                return None
            if holder:
                f.close()
                return (f"{self.run_dir} is being trained by another trainer ({holder}); wait for it to end or "
                        "stop it, then continue with --resume auto, or train in another folder with --out")
            self.file = f
        if create:
            self.file.seek(0)
            self.file.truncate()
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
            self.file.flush()
        return None


def _held_by(f) -> str | None:
    """Takes the lock on the open lock file ``f``: None when it is taken, else who holds
    it (what the file says). OSError: the file system does not lock files."""
    import fcntl

    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in HELD:
            raise
        f.seek(0)
        return f.read().strip() or "a process that did not say which"
    return None


def trained_by(run_dir: Path) -> str | None:
    """Who holds the trainer's lock on ``run_dir`` (its pid and host), or None when no
    trainer runs there (or the file system cannot tell). The lock is tried and let go at once."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return None
    with open(path, "r+", encoding="utf-8") as f:
        try:
            return _held_by(f)
        except OSError:
            return None


def run_dir_of(name: str, out) -> Path:
    """The run folder: ``out``, or ``runs/<recipe name>``."""
    return Path(out) if out else Path("runs") / name


@dataclass(frozen=True)
class Earlier:
    """What an earlier run left in a folder: its checkpoints (oldest first) and
    whether it ran stages."""

    checkpoints: tuple[Path, ...]
    staged: bool

    @classmethod
    def of(cls, run_dir: Path) -> "Earlier":
        return cls(tuple(checkpoint.list_checkpoints(run_dir)), (Path(run_dir) / STAGES_DIR).is_dir())

    def __bool__(self) -> bool:
        return bool(self.checkpoints) or self.staged

    def describe(self, run_dir: Path) -> str:
        return (f"newest checkpoint {self.checkpoints[-1].name}" if self.checkpoints
                else f"stages in {Path(run_dir) / STAGES_DIR}")


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool, *, stage: str | None = None) -> Path | None:
    """Refuses a start that would replace or mix runs; returns the checkpoint to resume
    from (None: a fresh start, or a staged run whose stages resume themselves). Writes
    nothing. ``stage``: ``--stage NAME`` continues the run folder's staged run."""
    if resume and overwrite:
        raise UserError(f"--resume {resume} continues a run and --overwrite deletes it: give one of them")
    earlier = Earlier.of(run_dir)
    if earlier and not (resume or overwrite or stage is not None):
        raise UserError(f"{run_dir} holds an earlier run ({earlier.describe(run_dir)}); continue it with "
                        "--resume auto, start over with --overwrite, or pick another folder with --out")
    if stage is not None and overwrite:
        raise UserError(f"--stage {stage} reruns one stage of the run in {run_dir} and --overwrite deletes that "
                        "run: give one of them")
    start = checkpoint.resolve_resume(resume, run_dir)
    if start is not None and earlier and run_dir.resolve() not in start.resolve().parents:
        raise UserError(f"{run_dir} holds a run of its own, which resuming from {start} (another run's "
                        "checkpoint) would replace; pick an empty folder with --out")
    return start


def open_run_folder(run_dir: Path, overwrite: bool, accelerator) -> None:
    """Creates the run folder, clears a killed run's partial writes and, under
    ``--overwrite``, removes every output of the earlier run (:data:`RUN_OUTPUTS`)."""
    if accelerator.is_main_process:
        earlier = Earlier.of(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partial_writes(run_dir)
        if overwrite and any((run_dir / name).exists() for name in RUN_OUTPUTS):
            stages = sorted(p.name for p in (run_dir / STAGES_DIR).iterdir()) if earlier.staged else []
            kept = len(earlier.checkpoints) + len(list((run_dir / STAGES_DIR).glob("*/checkpoints/epoch_*.pt")))
            print(f"--overwrite: removing the earlier run in {run_dir} ({kept} checkpoint{'' if kept == 1 else 's'}"
                  f"{', stages ' + ', '.join(stages) if stages else ''}, its recipe and metrics)", flush=True)
            for name in RUN_OUTPUTS:
                path = run_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()


def record_recipe(recipe, run_dir: Path, accelerator, *, note: str = "resuming") -> None:
    """Writes ``config.toml`` (the recipe that trains the weights about to be written).
    A recipe other than the one recorded there is named, ``note`` first ("resuming",
    "rerunning stage linear"), and the earlier one kept in ``config_history/``."""
    from gssl_fast.config import recipe_changes, save_recipe

    path = Path(run_dir) / CONFIG
    if accelerator.is_main_process:
        if path.is_file():
            changed = recipe_changes(path, recipe)
            if changed:
                history = Path(run_dir) / HISTORY
                history.mkdir(exist_ok=True)
                kept = history / f"config-{len(list(history.glob('config-*.toml'))) + 1:03d}.toml"
                kept.write_bytes(path.read_bytes())
                print(f"{note} with changed settings: {'; '.join(changed)} (the earlier recipe: {kept})", flush=True)
        save_recipe(recipe, path)
    accelerator.wait_for_everyone()
