"""One epoch of optimizer steps: the streams' batches, the method's step, backward and
the optimizer, the step's scalars summed; and where a preempted epoch starts again.

A SIGTERM or SIGINT (``Preemption``) ends the epoch at the next step boundary that every
process agrees on; the loop then writes a mid-epoch checkpoint holding the steps done
and the sums so far (:class:`Partial`), and a resumed run replays the streams to that
step (their batches are a function of seed, epoch and step) and goes on from there.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from pipelines.errors import UserError
from gssl_fast.faults import crash_point
from gssl_fast.run.health import LossGuard
from gssl_fast.run.peers import Process, watching

# Steps between two looks, agreed by every process, at whether a stop was asked for.
AGREE_EVERY = 10
# The scalar counting the steps skipped under train.nonfinite = "skip".
NONFINITE = "nonfinite_steps"


@dataclass
class Partial:
    """Where an epoch stopped: ``step`` steps done, the scalars' ``names`` and ``sums``
    ``[S]`` float32 and the main stream's ``images`` of this process so far."""

    step: int = 0
    names: list | None = None
    sums: torch.Tensor | None = None
    images: int = 0
    rng: dict | None = None  # the random state at ``step`` (checkpoint.rng_state), set again after the replay

    def state(self, accelerator) -> dict:
        """What a checkpoint keeps, with every process's own sums, images and random
        state under ``processes`` (by rank): each resumes its own share of the epoch."""
        from gssl_fast.checkpoint import rng_state

        own = {"sums": None if self.sums is None else self.sums.cpu(), "images": self.images, "rng": rng_state()}
        everyone = [own]
        if accelerator.num_processes > 1:
            import torch.distributed as dist

            everyone = [None] * accelerator.num_processes
            dist.all_gather_object(everyone, own)
        return {"step": self.step, "names": list(self.names or []), "sums": own["sums"], "images": self.images,
                "processes": everyone}

    @classmethod
    def of(cls, state: dict | None, rng: dict | None = None, rank: int = 0) -> "Partial | None":
        """The partial epoch of a checkpoint's ``state`` for process ``rank`` (its own
        sums, images and random state when the checkpoint has them, else ``rng``)."""
        if not state:
            return None
        mine = state.get("processes", [])
        mine = mine[rank] if rank < len(mine) else {"sums": state["sums"], "images": state["images"], "rng": rng}
        return cls(int(state["step"]), list(state["names"]) or None, mine["sums"], int(mine["images"]), mine["rng"])


class Preemption:
    """SIGTERM / SIGINT handlers that ask the loop to stop at the next step boundary
    instead of dying in the middle of one; restores the previous handlers on exit.

    One Ctrl-C reaches a process under ``accelerate launch`` twice: the terminal's
    SIGINT to the foreground group, then the launcher's SIGTERM a few milliseconds later
    (torchrun's workers, in a session of their own, get the launcher's copy alone). A
    signal within ``SAME_REQUEST_S`` of the first is that same request; only a later one
    (a deliberate second Ctrl-C) stops at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    SAME_REQUEST_S = 1.0

    def __init__(self):
        self.signum = 0
        self.asked_at = 0.0
        self.previous = {}

    def __enter__(self) -> "Preemption":
        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._ask)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc) -> None:
        # A handler set since (a lost peer's SIG_IGN, peers.watching) stays: the process
        # is stopping, and the launcher's SIGTERM must not kill it before it says why.
        for sig, handler in self.previous.items():
            if signal.getsignal(sig) == self._ask:
                signal.signal(sig, handler)

    def _ask(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum:
            if now - self.asked_at < self.SAME_REQUEST_S:
                return
            raise KeyboardInterrupt  # asked again: stop now, as the signal would have
        self.signum, self.asked_at = signum, now
        if os.environ.get("RANK", "0") == "0":  # os.write: print is not safe inside a signal handler
            os.write(2, f"\n{signal.Signals(signum).name}: stopping at the next step to write a checkpoint "
                        f"(again, after a second, stops at once)\n".encode())

    def agreed(self, step: int, last: bool, accelerator) -> int:
        """The signal every process saw by now (0: none), looked at every
        ``AGREE_EVERY`` steps with several processes, every step with one."""
        if accelerator.num_processes == 1:
            return self.signum
        if (step + 1) % AGREE_EVERY and not last:
            return 0
        flag = torch.tensor(self.signum, device=accelerator.device)
        return int(accelerator.reduce(flag, reduction="max"))


@contextmanager
def stopping(processes: list[Process], me: int, resume_hint: Callable[[], str]) -> Iterator[Preemption]:
    """How the loop stops: at an agreed step boundary on SIGTERM or SIGINT (the
    :class:`Preemption` yielded), with one line naming a lost peer (``peers.watching``).
    Watching runs inside Preemption, so that the launcher's SIGTERM to the survivors of a
    lost peer meets a handler at every moment: Preemption's, until watching ignores it."""
    with Preemption() as preemption, watching(processes, me, resume_hint):
        yield preemption


class Stopped(Exception):
    """The epoch ended early at a step boundary because of ``signum``."""

    def __init__(self, signum: int, partial: Partial):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.partial = signum, partial


NO_PREEMPTION = Preemption()


def train_one_epoch(run, epoch: int, *, steps: int, progress, start: Partial | None = None,
                    preemption: Preemption = NO_PREEMPTION) -> tuple[list[str], torch.Tensor, int]:
    """``steps`` steps of ``run``'s method (``gssl_fast.run.loop.Run``: its prepared model,
    optimizer, schedule, loaders and accelerator) from ``start.step`` on, the streams
    replayed to there; returns the names of the step's scalars, their sums as a ``[S]``
    float32 tensor (not yet reduced across processes) and the images of the main stream
    this process trained on. Raises :class:`Stopped` at a step boundary when a stop was asked.

    Under ``train.nonfinite = "skip"`` an optimizer step whose gradients (reduced over the
    processes, so every process agrees) are not finite is skipped instead of stopping the
    run; the scalar ``NONFINITE`` counts the batches of skipped steps and the others
    average over the batches of the steps taken."""
    method, model, accelerator = run.method, run.model, run.accelerator
    optimizer, scheduler, loaders = run.optimizer, run.scheduler, run.loaders
    skip_nonfinite = run.recipe.train.nonfinite == "skip"
    model.train()
    streams = {name: Cycle(loader, epoch) for name, loader in loaders.items()}
    main = next(iter(streams))
    done = start or Partial()
    names, images = done.names, done.images
    sums = None if done.sums is None else done.sums.to(accelerator.device)  # a checkpoint's are on the CPU
    guard = LossGuard(names, epoch=epoch, accelerator=accelerator) if names else None
    try:
        replay(streams, done)
        window = Window(method.model, keep_buffers=skip_nonfinite)
        for step in range(done.step, steps):
            batches = {name: next(stream) for name, stream in streams.items()}
            window.open()
            with accelerator.accumulate(model):
                out = method.training_step(model, batches, accelerator=accelerator)
                accelerator.backward(out["loss"])
                skip = optimizer_step(method, model, optimizer, scheduler, accelerator, skip_nonfinite)
            crash_point("step")
            if names is None:
                names = list(out) + ([NONFINITE] if skip_nonfinite else [])
                guard = LossGuard(names, epoch=epoch, accelerator=accelerator)
            window.add(step, torch.stack([torch.as_tensor(out.get(k, 0.0), device=accelerator.device).detach()
                                          .float().reshape(()) for k in names]))
            if accelerator.sync_gradients:
                total = window.close(skip, names, guard)
                sums = total if sums is None else sums + total
            images += batches[main]["labels"].shape[0]
            progress.update(batches[main]["labels"].shape[0] * accelerator.num_processes,
                            lambda: {"loss": out["loss"].item()})
            signum = preemption.agreed(step, step == steps - 1, accelerator) if step < steps - 1 else 0
            if signum and accelerator.sync_gradients:
                guard.check()
                raise Stopped(signum, Partial(step + 1, names, sums, images))
        guard.check()
        if skip_nonfinite and int(sums[names.index(NONFINITE)]) == steps:
            raise UserError(f"every step of epoch {epoch + 1} had gradients that are not finite and was skipped "
                            "(train.nonfinite = \"skip\"); lower optim.lr or look for broken images in the data")
    finally:
        for stream in streams.values():
            stream.close()
    return names, sums, images


def replay(streams: dict, done: Partial) -> None:
    """Draws the batches a stopped run already trained on, then puts back its random state."""
    for _ in range(done.step):
        for stream in streams.values():
            next(stream)
    if done.rng is not None:
        from gssl_fast.checkpoint import set_rng_state

        set_rng_state(done.rng)


class Window:
    """The step rows of one accumulation window, summed when its optimizer step is
    taken; when it is skipped, each row counts one ``NONFINITE`` batch and nothing else,
    and the buffers (BatchNorm statistics) its forward passes left non-finite are put
    back (``keep_buffers``: snapshot them as a window opens)."""

    def __init__(self, model, *, keep_buffers: bool):
        self.model, self.keep_buffers = model, keep_buffers
        self.rows: list = []
        self.kept: list = []

    def open(self) -> None:
        if self.keep_buffers and not self.rows:
            self.kept = [b.detach().clone() for b in self.model.buffers()]

    def add(self, step: int, row: torch.Tensor) -> None:
        self.rows.append((step, row))

    def close(self, skip: bool, names: list[str], guard: LossGuard) -> torch.Tensor:
        """The window's summed ``[S]`` rows (observed by ``guard`` unless skipped)."""
        if skip:
            restore_if_broken(self.model, self.kept)
        total = None
        for step, row in self.rows:
            if skip:
                row = torch.zeros_like(row)
                row[names.index(NONFINITE)] = 1.0
            else:
                guard.observe(step, row)
            total = row if total is None else total + row
        self.rows = []
        return total


def optimizer_step(method, model, optimizer, scheduler, accelerator, skip_nonfinite: bool) -> bool:
    """The optimizer step, schedule and method hook at the end of an accumulation window
    (inside ``accelerator.accumulate``); returns whether the step was skipped: under
    ``skip_nonfinite``, gradients that are not finite, or the fp16 gradient scaler's own
    skip (the scaler must see every step to lower its scale)."""
    sync, scaled = accelerator.sync_gradients, accelerator.scaler is not None
    skip = skip_nonfinite and sync and not scaled and not gradients_finite(model)
    if not skip:
        optimizer.step()
        skip = skip_nonfinite and sync and scaled and bool(optimizer.step_was_skipped)
    if sync:
        with warnings.catch_warnings():  # a skipped step still counts: the schedule follows the plan
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            scheduler.step()
        if not skip:
            method.on_optimizer_step(method.model)
    optimizer.zero_grad(set_to_none=True)
    return skip


def restore_if_broken(model, kept: list) -> None:
    """Puts back the buffers ``kept`` before a skipped window when its forward passes left
    any of them (BatchNorm running statistics) not finite."""
    buffers = list(model.buffers())
    if any(b.is_floating_point() and not bool(torch.isfinite(b).all()) for b in buffers):
        for b, old in zip(buffers, kept):
            b.copy_(old)


def gradients_finite(model) -> bool:
    """Whether every gradient of ``model`` is finite (one host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class Cycle:
    """Endless batches of one stream's loader: a fresh pass whenever one runs out.

    In epoch ``e`` the first pass is the loader's epoch ``e`` (for the main stream, the
    only one) and pass ``p > 0`` its epoch ``(e << 16) + p``, so every batch is a function
    of (seed, epoch, step) and a resumed run draws what an unbroken one would. Every
    stream starts a fresh pass at each epoch.
    """

    def __init__(self, loader, epoch: int):
        self.loader, self.epoch, self.passes = loader, epoch, 0
        self.it = self._start()

    def _start(self):
        self.loader.set_epoch(self.epoch if self.passes == 0 else (self.epoch << 16) + self.passes)
        self.passes += 1
        return iter(self.loader)

    def __next__(self) -> dict:
        try:
            return next(self.it)
        except StopIteration:
            self.it = self._start()
            return next(self.it)

    def close(self) -> None:
        """Stops the loader's pass early (FFCV and DALI hold threads until then)."""
        if hasattr(self.it, "close"):
            self.it.close()


def epoch_row(names: list[str], sums: torch.Tensor, steps: int) -> dict:
    """Reduced step sums -> the training fields of metrics.jsonl: each scalar's mean
    over the epoch's steps taken (``NONFINITE``: the count of skipped ones) and
    processes; ``loss`` is logged as ``train_loss`` and
    ``group/key`` names become ``{"group": {"key": value}}``."""
    row: dict = {}
    skipped = int(sums[names.index(NONFINITE)]) if NONFINITE in names else 0
    for name, total in zip(names, (sums / max(steps - skipped, 1)).tolist()):
        if name == NONFINITE:
            row[name] = skipped
            continue
        group, _, key = name.rpartition("/")
        name = "train_loss" if name == "loss" else name
        if group:
            row.setdefault(group, {})[key] = total
        else:
            row[name] = total
    return row
