"""The processes of a multi-process run: their weights kept identical, and a clear stop
when one of them is gone.

When a process of the run dies (killed, out of memory, a lost node), the others fail in
their next collective (gloo: the connection is reset; NCCL: its watchdog times out) and
a launcher such as torchrun stops them. :func:`watching` turns that failure into
:class:`PeerLost`, whose one line names the process that is gone, and the survivors exit
with :data:`PEER_EXIT` at once instead of printing a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

# Exit status of a process whose peer is gone: EX_TEMPFAIL, "try again" (--resume auto).
PEER_EXIT = 75
# Words of the errors a collective raises when the other end has gone away.
BROKEN = ("connection reset", "connection closed", "connection refused", "broken pipe")
# How long a survivor waits for a peer whose connection broke to be seen gone.
GONE_WITHIN_S = 3.0


@dataclass(frozen=True)
class Process:
    rank: int
    host: str
    pid: int


class PeerLost(Exception):
    """Another process of the run is gone; the message says which and what to do."""


def register(accelerator) -> list[Process]:
    """Every process of the run (rank, host, pid), gathered once at the start; empty
    for a single process."""
    if accelerator.num_processes < 2:
        return []
    import torch.distributed as dist

    everyone: list = [None] * accelerator.num_processes
    dist.all_gather_object(everyone, (socket.gethostname(), os.getpid()))
    return [Process(rank, host, pid) for rank, (host, pid) in enumerate(everyone)]


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, dead but not yet reaped by its
    launcher, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def gone(processes: list[Process], me: int) -> list[Process]:
    """The other processes of this host that no longer run."""
    host = socket.gethostname()
    return [p for p in processes if p.rank != me and p.host == host and not alive(p.pid)]


def lost_message(processes: list[Process], me: int, error: BaseException, resume_hint: Callable[[], str]) -> str | None:
    """The line a surviving process prints, or None when ``error`` is not a collective
    broken by a peer (torch's distributed errors, or a connection the other end closed)."""
    import torch.distributed as dist

    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip())  # gloo's "[file.cc:line] " prefix
    text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0] if text else type(error).__name__
    distributed = (dist.DistBackendError, dist.DistNetworkError)
    if not isinstance(error, distributed) and not any(word in str(error).lower() for word in BROKEN):
        return None
    missing = gone(processes, me)
    # A killed process closes its sockets before it is seen to be gone: wait a moment
    # for its end before calling the silence nameless.
    deadline = time.monotonic() + GONE_WITHIN_S
    while not missing and time.monotonic() < deadline:
        time.sleep(0.05)
        missing = gone(processes, me)
    if missing:
        who = ", ".join(f"process {p.rank} (pid {p.pid} on {p.host})" for p in missing)
        what = f"{who} {'is' if len(missing) == 1 else 'are'} gone"
    else:
        what = "another process stopped answering"
    return f"process {me} of {len(processes)} stops: {what} ({text[:160]}); {resume_hint()}"


@contextmanager
def watching(processes: list[Process], me: int, resume_hint: Callable[[], str]):
    """Raises :class:`PeerLost` in place of a collective's failure caused by a process
    that is gone. SIGTERM is ignored from then on: the launcher sends it to the survivors
    of a failed process, and this one is already stopping (``epoch.stopping`` puts this
    inside ``epoch.Preemption``, whose handler covers the moments before)."""
    try:
        yield
    except RuntimeError as e:
        message = lost_message(processes, me, e, resume_hint) if len(processes) > 1 else None
        if message is None:
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise PeerLost(message) from e


def broadcast_buffers(model, accelerator) -> None:
    """Copies process 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts them at the start of each forward, but the forward then updates them
    from the local batch, so after an epoch they differ slightly between processes;
    evaluation and the checkpoint should see one model.
    """
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def replicas_in_sync(model, accelerator) -> bool:
    """Whether every process holds bit-identical parameters and buffers, compared by a
    float64 fingerprint (sum and sum of squares of each tensor) gathered from all."""
    tensors = list(model.state_dict().values())
    prints = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors])
    everyone = accelerator.gather(prints[None].to(accelerator.device))
    return bool((everyone == everyone[:1]).all())
