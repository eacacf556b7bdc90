"""Checkpoints written atomically, the choice of where a run resumes, and the training
state a checkpoint holds (``save_checkpoint`` / ``restore``).

A checkpoint is one ``torch.save`` dict of tensors and plain values (loadable with
``weights_only=True``): model, optimizer, schedule, grad scaler, RNG states, and
``epoch`` = the number of finished epochs.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from pipelines.errors import UserError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run folder, oldest first (temporary files ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_atomic(state: dict, path: Path) -> None:
    """Writes to a temporary file in the same folder, syncs, then renames: a reader
    (or a resumed run) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prune(run_dir: Path, keep: int) -> None:
    """Removes all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: None for a fresh run; ``"auto"`` = the newest in
    the run folder (None when there is none); anything else is a file path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"--resume {resume}: no such checkpoint file; use --resume auto to take the newest in {run_dir}")
    return path


def load(path: Path) -> dict:
    """Loads a checkpoint as data only (``weights_only=True``): no code runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why
        raise UserError(f"cannot read checkpoint {path}: {e}") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir, epochs_done, recipe_toml: str, method, optimizer, scheduler, accelerator, keep) -> None:
    """Main process writes atomically; the others wait so nobody races ahead of it.

    Beside the training state: the resolved recipe (``recipe_toml``, as
    ``gssl_fast.config.recipe_to_toml`` writes it) and what the method was built from
    (``context``), so that ``gssl_fast.load_model`` rebuilds the model from the file alone.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ctx = method.ctx
        state = {
            "epoch": epochs_done,
            "model": method.model.state_dict(),
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": rng_state(),
            "recipe": recipe_toml,
            "context": {"class_counts": list(ctx.class_counts), "mean": list(ctx.mean), "std": list(ctx.std)},
        }
        save_atomic(state, checkpoint_path(run_dir, epochs_done))
        prune(run_dir, keep)
    accelerator.wait_for_everyone()


def restore(path: Path, method, optimizer, scheduler, accelerator) -> int:
    """Loads a checkpoint into the method's model and state and the optimizer; returns
    the finished epochs."""
    state = load(path)
    try:
        method.model.load_state_dict(state["model"])
        method.load_state_dict(state.get("method", {}))
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {path} does not fit this recipe's model: {str(e).splitlines()[0]}") from None
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if accelerator.is_main_process:
        print(f"resumed from {path} after epoch {state['epoch']}", flush=True)
    return int(state["epoch"])
