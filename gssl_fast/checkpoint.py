"""Checkpoints written atomically, the choice of where a run resumes, and the training
state a checkpoint holds (``save_checkpoint`` / ``restore``).

A checkpoint is one ``torch.save`` dict of tensors and plain values (loadable with
``weights_only=True``): model, optimizer, schedule, grad scaler, RNG states, and
``epoch`` = the number of finished epochs.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import torch

from gssl_fast.faults import crash_point
from pipelines.atomic import write_atomic
from pipelines.errors import UserError

CHECKPOINT_DIR = "checkpoints"
# A staged run keeps each stage's checkpoints and files in <run>/stages/<name>/.
STAGES_DIR = "stages"
# epoch_0003.pt: 3 epochs done; epoch_0002_step_000120.pt: 2 epochs and 120 steps of the third
# (written when a run is preempted).
_NAME = re.compile(r"^epoch_(\d{4,})(?:_step_(\d{6,}))?\.pt$")


def checkpoint_path(run_dir: Path, epoch: int, step: int = 0) -> Path:
    name = f"epoch_{epoch:04d}_step_{step:06d}.pt" if step else f"epoch_{epoch:04d}.pt"
    return Path(run_dir) / CHECKPOINT_DIR / name


def stage_dir(run_dir: Path, name: str) -> Path:
    """The folder of stage ``name`` of the staged run in ``run_dir``: its checkpoints and files."""
    return Path(run_dir) / STAGES_DIR / name


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run folder, oldest first (temporary files ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_atomic(state: dict, path: Path) -> None:
    """Writes to a temporary file in the same folder, syncs, then renames: a reader
    (or a resumed run) sees the old file or the new one, never half of one."""
    write_atomic(path, lambda f: torch.save(state, f), before_rename=lambda: crash_point("checkpoint"))


def remove_partial_writes(run_dir: Path) -> int:
    """Deletes the temporary files of checkpoint writes a killed run left behind; returns
    how many there were."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    stale = list(folder.glob(".epoch_*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def prune(run_dir: Path, keep: int) -> None:
    """Removes the step checkpoints that a newer checkpoint supersedes, then all but the
    newest ``keep`` checkpoints."""
    found = list_checkpoints(run_dir)
    # A step checkpoint (a preempted epoch) is only there to resume from; once a later step
    # or the epoch's end is written, nothing resumes from it, and it must not take the place
    # of an epoch checkpoint among the ``keep`` newest.
    superseded = [p for p in found[:-1] if _NAME.match(p.name).group(2)]
    kept = [p for p in found if p not in superseded]
    for old in superseded + kept[:-keep]:
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
    """torch's, CUDA's and numpy's global random state, as tensors and numbers."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir, epochs_done, recipe_toml: str, method, optimizer, scheduler, accelerator, keep,
                    partial: dict | None = None) -> Path:
    """Main process writes atomically; the others wait so nobody races ahead of it.

    Beside the training state: the resolved recipe (``recipe_toml``, as
    ``gssl_fast.config.recipe_to_toml`` writes it) and what the method was built from
    (``context``), so that ``gssl_fast.load_model`` rebuilds the model from the file alone.
    ``partial``: where an epoch stopped (``gssl_fast.run.epoch.Partial.state``), for a
    mid-epoch checkpoint. Returns the file's path.
    """
    path = checkpoint_path(run_dir, epochs_done, partial["step"] if partial else 0)
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
            "context": {"class_counts": list(ctx.class_counts), "mean": list(ctx.mean), "std": list(ctx.std),
                        "classes": list(class_names(ctx))},
            "partial": partial,
        }
        try:
            save_atomic(state, path)
        except OSError as e:  # a full disk, say: the temp file is gone, the older checkpoints intact
            found = list_checkpoints(run_dir)
            kept = f"the newest checkpoint, {found[-1]}, is intact" if found else "no earlier checkpoint exists"
            raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}; {kept}; free space and continue "
                            "with --resume auto") from None
        prune(run_dir, keep)
    accelerator.wait_for_everyone()
    return path


# --resume with --overwrite is refused (one continues a run, the other deletes it), so the
# advice names them apart.
RESUME_ADVICE = ("resume with the recipe it was written with (config.toml of its run), train this recipe in "
                 "another folder with --out, or start over in this one with --overwrite (without --resume)")


def class_names(ctx) -> tuple[str, ...]:
    """The class names of the training data (``ctx.classes``); () where the context was
    built without them, and the classes are then compared by count alone."""
    return tuple(str(c) for c in ctx.classes)


def _classes_text(count: int, names, data: dict) -> str:
    """``10 classes ('circle', 'square', 'triangle', ...) of data.name = 'shapes'``."""
    shown = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
    where = ", ".join(f"data.{k} = {data[k]!r}" for k in ("name", "root") if data.get(k))
    return f"{count} classes" + (f" ({shown})" if names else "") + (f" of {where}" if where else "")


def check_classes(path: Path, state: dict, ctx) -> None:
    """UserError when the checkpoint was trained on other classes than ``ctx``'s data:
    its class head (and the class counts a loss reads) cannot go on with them."""
    saved = state.get("context") or {}
    if ctx is None or "class_counts" not in saved:
        return  # nothing to compare; the weights' shapes are still checked on loading
    old_names, new_names = tuple(saved.get("classes") or ()), class_names(ctx)
    same_count = len(saved["class_counts"]) == len(ctx.class_counts)
    if same_count and (not old_names or not new_names or old_names == new_names):
        return
    try:
        old_data = tomllib.loads(state.get("recipe") or "").get("data", {})
    except tomllib.TOMLDecodeError:
        old_data = {}
    new_data = {"name": ctx.data.name, "root": ctx.data.root} if getattr(ctx, "data", None) else {}
    raise UserError(f"checkpoint {path} was trained on {_classes_text(len(saved['class_counts']), old_names, old_data)}"
                    f", but this recipe's data has {_classes_text(len(ctx.class_counts), new_names, new_data)}; "
                    f"{RESUME_ADVICE}")


def restore(path: Path, method, optimizer, scheduler, accelerator) -> tuple[int, dict | None, dict]:
    """Loads a checkpoint into the method's model and state and the optimizer; returns
    the finished epochs, where the next epoch stopped (None: at its start) and the
    random state the checkpoint holds."""
    state = load(path)
    check_classes(path, state, getattr(method, "ctx", None))
    lr = [g["initial_lr"] for g in optimizer.param_groups]  # this recipe's, before the saved state
    try:
        method.model.load_state_dict(state["model"])
        method.load_state_dict(state.get("method", {}))
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        # torch lists every missing, unexpected and mis-shaped weight: name the first few,
        # whole, so that the advice after them is never cut off.
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        more = f"; and {len(lines) - 3} more" if len(lines) > 3 else ""
        raise UserError(f"checkpoint {path} does not fit this recipe's model ({'; '.join(lines[:3])}{more}); "
                        f"{RESUME_ADVICE}") from None
    scheduler.load_state_dict(state["scheduler"])
    # The recipe of the resumed run sets the peak lr (a changed optim.lr is named by the loop).
    scheduler.base_lrs = lr
    for group, base, factor in zip(optimizer.param_groups, lr, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if accelerator.is_main_process:
        where = f", step {state['partial']['step']} of the next" if state.get("partial") else ""
        print(f"resumed from {path} after epoch {state['epoch']}{where}", flush=True)
    return int(state["epoch"]), state.get("partial"), state["rng"]
