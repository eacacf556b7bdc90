"""Stopping a run whose loss is no longer a number.

A NaN or infinite loss (an lr too high, a broken batch) poisons the weights at the next
optimizer step; the run should stop there, say where, and leave the last good checkpoint
as the newest. :class:`LossGuard` watches every step's scalars on the device and looks at
them on the host only every few steps and at the end of the epoch, so a CUDA run does not
wait for the GPU at each step; the epoch's checkpoint is then never written.
"""

from __future__ import annotations

import torch

from pipelines.errors import UserError

# Steps between two looks at the losses on the host.
CHECK_EVERY = 10


class LossGuard:
    """``observe(step, row)`` after each step (``row``: ``[S]`` float32 on the device, the
    step's scalars named ``names``), ``check()`` at the end of the epoch. Every process
    looks at the same steps and the verdict is the first bad step of any of them, so all
    stop together (no process waits for a collective the others left)."""

    def __init__(self, names: list[str], *, epoch: int, accelerator, every: int = CHECK_EVERY):
        self.names, self.epoch, self.accelerator, self.every = names, epoch, accelerator, every
        self.bad_step = self.bad_row = None

    def observe(self, step: int, row: torch.Tensor) -> None:
        if self.bad_step is None:
            self.bad_step = torch.full((), -1, dtype=torch.int64, device=row.device)
            self.bad_row = torch.zeros_like(row)
        first = ~torch.isfinite(row[self.names.index("loss")]) & (self.bad_step < 0)
        self.bad_step = torch.where(first, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_row = torch.where(first, row, self.bad_row)
        if (step + 1) % self.every == 0:
            self.check()

    def check(self) -> None:
        """Raises ``UserError`` naming the first step whose loss was not finite."""
        if self.bad_step is None:
            return
        step = self.bad_step
        if self.accelerator.num_processes > 1:  # -1 nowhere, else the latest first-bad step seen
            step = self.accelerator.reduce(step.clone(), reduction="max")
        step = int(step)
        if step < 0:
            return
        terms = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.names, self.bad_row.tolist()))
        raise UserError(
            f"the loss is not finite at epoch {self.epoch + 1}, step {step + 1} ({terms}); the run stops and "
            "this epoch's checkpoint is not written, so --resume auto restarts from the last good one; "
            "lower optim.lr (or raise optim.warmup_epochs), or look for broken images in the data"
        )
