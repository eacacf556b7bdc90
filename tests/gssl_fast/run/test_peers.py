"""Several processes: one of them dying stops the others at once, naming it; a preempted
two-process run stops mid-epoch at an agreed step; both resume bit-exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch.distributed

from bench.crash_points import ROOT, final, same, train
from gssl_fast.run.epoch import Preemption
from gssl_fast.run.peers import PEER_EXIT, Process, alive, lost_message
from tests.gssl_fast.tiny import write_tiny

# 12 steps an epoch: the processes agree on a stop after 10 (gssl_fast.run.epoch.AGREE_EVERY).
ARGS = ["--set", "train.epochs=2", "--set", "train.steps_per_epoch=12", "--set", "data.train_size=192"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The unbroken two-process run (it also stands for the two-process torch run of
    test_train.py's sync test)."""
    folder = tmp_path_factory.mktemp("peers")
    recipe = write_tiny(folder)
    run = train(recipe, folder / "straight", *ARGS, processes=2, port=29571)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = final(folder / "straight")[1]
    assert [r["world_size"] for r in rows] == [2, 2] and all(r["replicas_in_sync"] for r in rows)
    return recipe, final(folder / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("dies", [1, 0])
def test_a_dead_process_stops_the_other_which_names_it_and_the_run_resumes(tmp_path, straight, dies):
    recipe, unbroken = straight
    out = tmp_path / "run"
    start = time.monotonic()
    # Rank `dies` is killed after the second step of epoch 2 (epoch 1's checkpoint is written).
    killed = train(recipe, out, *ARGS, crash=f"step:14@{dies}", processes=2, port=29572 + dies)
    assert time.monotonic() - start < 120, "the survivor must not hang"
    survivor = 1 - dies
    lines = [line for line in killed.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, killed.stderr[-3000:]
    assert f"process {survivor} of 2 stops: process {dies} (pid " in lines[0] and "is gone" in lines[0]
    assert "epoch_0001.pt: rerun with --resume auto" in lines[0]
    assert f"exitcode  : {PEER_EXIT}" in killed.stderr  # torchrun's summary of the survivor
    if dies == 0:
        return  # the resume is the same whichever process died
    resumed = train(recipe, out, *ARGS, "--resume", "auto", processes=2, port=29575)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same(final(out), unbroken)


@pytest.mark.slow
def test_a_preempted_two_process_run_stops_at_an_agreed_step_and_resumes_bit_exact(tmp_path, straight):
    recipe, unbroken = straight
    out = tmp_path / "run"
    # SIGTERM reaches rank 1 only, after step 5: both processes stop after step 10, where they agree.
    stopped = train(recipe, out, *ARGS, crash="step:5@1", signal="TERM", processes=2, port=29576)
    assert "stopped by SIGTERM at epoch 1, step 10" in stopped.stderr, stopped.stderr[-3000:]
    assert "exitcode  : 143" in stopped.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_0000_step_000010.pt"]
    resumed = train(recipe, out, *ARGS, "--resume", "auto", processes=2, port=29577)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same(final(out), unbroken)


def test_only_a_collective_broken_by_a_peer_becomes_a_peer_error():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    processes = [Process(0, os.uname().nodename, os.getpid()), Process(1, os.uname().nodename, child.pid)]
    assert alive(os.getpid()) and not alive(child.pid)
    hint = lambda: "rerun with --resume auto"  # noqa: E731
    message = lost_message(processes, 0, RuntimeError("[pair.cc:545] Read error: Connection reset by peer. More."), hint)
    assert message == (f"process 0 of 2 stops: process 1 (pid {child.pid} on {os.uname().nodename}) is gone "
                       "(Read error: Connection reset by peer.); rerun with --resume auto")
    living = [processes[0], Process(1, os.uname().nodename, os.getpid())]
    assert lost_message(living, 0, RuntimeError("shape mismatch in matmul"), hint) is None
    assert lost_message(processes, 0, RuntimeError("CUDA out of memory"), hint) is None, "a bug stays a bug"
    assert lost_message(living, 0, RuntimeError("NCCL error: unhandled system error"), hint) is None
    timeout = torch.distributed.DistBackendError("NCCL watchdog thread terminated with exception: timed out")
    assert "another process stopped answering" in lost_message(living, 0, timeout, hint)


# The launcher's SIGTERM reaches a survivor at any moment of its stop: here while it reads
# the collective's error (str() of it), and again after it has said why it stops.
SIGTERM_WHILE_STOPPING = """
import os, signal, sys
from gssl_fast.run.epoch import stopping
from gssl_fast.run.peers import PeerLost, Process

class Reset(RuntimeError):
    sent = False

    def __str__(self):
        if not Reset.sent:
            Reset.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return "Read error: Connection reset by peer."

host = os.uname().nodename
processes = [Process(0, host, os.getpid()), Process(1, host, int(sys.argv[1]))]
try:
    with stopping(processes, 0, lambda: "rerun with --resume auto"):
        raise Reset()
except PeerLost as e:
    print(e, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
print("still running")
"""


def test_the_launchers_sigterm_never_kills_a_survivor_before_it_names_the_lost_peer():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    run = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_STOPPING, str(child.pid)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and f"process 1 (pid {child.pid} on" in lines[0] and lines[1] == "still running", lines


def test_preemption_restores_the_signal_handlers_it_replaced():
    before = signal.getsignal(signal.SIGTERM)
    with Preemption():
        assert signal.getsignal(signal.SIGTERM) != before
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(ValueError), Preemption():
        raise ValueError("a bug stays a bug")
    assert signal.getsignal(signal.SIGTERM) == before
