"""A ladder's rows side by side: ``--parallel N`` on this machine, ``--slurm PARTITION``
as submitit jobs.

A row is a command line (``gssl_fast.ladder.command``). ``--parallel N`` keeps up to N
of them running as processes of this machine: each on a GPU of its own
(``CUDA_VISIBLE_DEVICES``), or without GPUs on ``cores // N`` torch threads
(``--set train.num_threads``). ``--slurm PARTITION`` submits each row as a job through
submitit (``--slurm local``: submitit's ``LocalExecutor``, the same code path without a
cluster). A preempted job stops its training at the next step (the run writes a
checkpoint) and is requeued with ``--resume auto`` (:meth:`RowJob.checkpoint`); a job that
died without the row's exit status (a lost node, a killed process) is resubmitted, up to
``RESUBMITS`` times. Each row's output goes to ``<out>/<row>/ladder.log``; the console
gets a line as each row starts and ends. The ladder process alone writes the table, after
each row ends (``side_by_side``'s ``ended``).

Nothing here knows tables: this module sits under ``gssl_fast.ladder``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pipelines.errors import UserError

LOG = "ladder.log"  # in a row's run folder: the output of its training, every start appended
POLL_S = 0.5  # between two looks at the running rows
RESUBMITS = 2  # of a row whose job died (--slurm)
TAIL_CHARS = 1 << 16  # of a row's output, read for its "error: " line
SLURM_TIME = "24:00:00"
# CPU cores a row's job asks for per GPU (or in all, without GPUs): its loaders decode
# there, and Slurm's own default of one core would starve them.
SLURM_CPUS_PER_GPU = 8
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def add_arguments(p) -> None:
    """The command-line flags of rows side by side, on ``python -m gssl_fast.ladder``'s parser."""
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run N rows at once on this machine: one GPU each, or without GPUs cores // N threads each")
    p.add_argument("--slurm", default=None, metavar="PARTITION",
                   help="submit each row as a Slurm job to PARTITION through submitit; preempted jobs resume "
                        "(local: submitit's local executor, jobs on this machine)")
    p.add_argument("--slurm-gpus", type=int, default=None, metavar="N", help="GPUs per row job (default 1)")
    p.add_argument("--slurm-time", default=None, metavar="TIME",
                   help=f"time limit per job: minutes or [D-]HH:MM:SS (default {SLURM_TIME})")
    p.add_argument("--slurm-mem", type=float, default=None, metavar="GB",
                   help="memory per job (default: the partition's)")
    p.add_argument("--slurm-cpus", type=int, default=None, metavar="N",
                   help=f"CPU cores per job, for its data loaders (default {SLURM_CPUS_PER_GPU} per GPU)")


def check_args(args) -> None:
    """One-line errors for flags of rows side by side that cannot go together."""
    if args.parallel < 1:
        raise UserError(f"--parallel {args.parallel}: give the number of rows to run at once, 1 or more")
    if args.parallel > 1 and args.slurm is not None:
        raise UserError(f"--parallel {args.parallel} and --slurm {args.slurm}: give one of them (the jobs of "
                        "--slurm run side by side)")
    if args.parallel > 1 and args.launch is not None:
        raise UserError(f"--parallel {args.parallel} runs each row as one process on one GPU; --launch "
                        f"{args.launch!r} needs the rows one at a time, or --slurm with --slurm-gpus")
    for flag, value in (("--slurm-gpus", args.slurm_gpus), ("--slurm-time", args.slurm_time),
                        ("--slurm-mem", args.slurm_mem), ("--slurm-cpus", args.slurm_cpus)):
        if value is not None and args.slurm is None:
            raise UserError(f"{flag} {value} sets the jobs of --slurm PARTITION, which is not given")
    if args.slurm_gpus is not None and args.slurm_gpus < 0:
        raise UserError(f"--slurm-gpus {args.slurm_gpus}: give 0 or more GPUs per job")
    if args.slurm_cpus is not None and args.slurm_cpus < 1:
        raise UserError(f"--slurm-cpus {args.slurm_cpus}: give 1 or more CPU cores per job")
    if args.slurm_mem is not None and args.slurm_mem <= 0:
        raise UserError(f"--slurm-mem {args.slurm_mem:g}: give the memory per job in GB, more than 0")
    if args.slurm_time is not None:
        minutes(args.slurm_time)


def minutes(text: str) -> int:
    """``--slurm-time`` in whole minutes: ``90`` or ``[D-]HH:MM:SS`` (``1-00:00:00``)."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", text)
    if text.isdigit() and int(text) > 0:
        return int(text)
    if found and any(int(g or 0) for g in found.groups()):
        days, hours, mins, secs = (int(g or 0) for g in found.groups())
        return (days * 24 + hours) * 60 + mins + (secs > 0)
    raise UserError(f"--slurm-time {text!r}: give minutes (90) or [D-]HH:MM:SS (1-00:00:00)")


def last_error(text: str) -> str | None:
    """The message of the last ``error: `` line of ``text`` (train's one line for a recipe
    or data error)."""
    errors = [line[len("error: "):] for line in text.splitlines() if line.startswith("error: ")]
    return errors[-1] if errors else None


def start_logged(cmd: Sequence[str], log: Path, env=None, preexec_fn=None) -> tuple[subprocess.Popen, int]:
    """Starts ``cmd`` with its stdout and stderr appended to ``log`` (after a line naming
    the start); returns the process and where its output begins in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        f.flush()
        offset = f.tell()
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn), offset


def error_in_log(log: Path, offset: int) -> str | None:
    """:func:`last_error` of what a start wrote to ``log`` from ``offset`` on (its last
    ``TAIL_CHARS`` bytes)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(offset, f.seek(0, os.SEEK_END) - TAIL_CHARS))
            return last_error(f.read().decode("utf-8", errors="replace"))
    except OSError:
        return None


def output_of(log: Path, cmd: Sequence[str]) -> str | None:
    """What the latest start of ``cmd`` wrote to ``log`` (:func:`start_logged`): the lines
    after its ``== <time> <cmd>`` line, up to the next start; None when it has none."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    heads = [i for i, line in enumerate(lines) if line.startswith("== ")]
    mine = [i for i in heads if lines[i].endswith(" " + shlex.join(cmd))]
    if not mine:
        return None
    after = [i for i in heads if i > mine[-1]]
    return "\n".join(lines[mine[-1] + 1: after[0] if after else len(lines)]) + "\n"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


@dataclass
class Started:
    """A running row: its handle with the runner (a process, a job) and when it started."""

    row: object
    handle: object
    at: float = field(default_factory=time.monotonic)
    tries: int = 0


def side_by_side(rows: list, runner, command_of: Callable[[object, Sequence[str]], list[str]],
                 ended: Callable[[object, int | None, str | None], None]) -> None:
    """Runs ``rows`` (each with a ``name``) through ``runner`` (:class:`LocalRows`,
    :class:`SlurmRows`) as it has room; ``command_of(row, overrides)`` is a row's command
    line with the runner's ``--set`` overrides. ``ended(row, status, message)`` is called
    here, one row at a time, as each ends (status None: its job died without one). On
    Ctrl-C the running rows are stopped (they write checkpoints) and ended, and the
    KeyboardInterrupt goes on."""
    todo, running = list(rows), {}
    try:
        while todo or running:
            while todo and runner.free():
                row = todo.pop(0)
                running[row.name] = Started(row, runner.start(row.name, command_of(row, runner.overrides)))
            time.sleep(POLL_S)
            for name, run in list(running.items()):
                outcome = runner.poll(run.handle)
                if outcome is None:
                    continue
                status, message = outcome
                if (status is None or status < 0) and run.tries < runner.resubmits:
                    why = ("the job died" if status is None else
                           f"the training was killed ({signal.Signals(-status).name})")
                    print(f"{name}: {why}; resubmitted ({run.tries + 1} of {runner.resubmits}), to continue from "
                          "its newest checkpoint", flush=True)
                    running[name] = Started(run.row, runner.start(name, command_of(run.row, runner.overrides)),
                                            tries=run.tries + 1)
                    continue
                del running[name]
                said = "finished" if status == 0 else "ended" if status is None else f"ended with exit status {status}"
                print(f"{name}: {said} after {_duration(time.monotonic() - run.at)}", flush=True)
                ended(run.row, status, message)
    except KeyboardInterrupt:
        for run, (status, message) in zip(running.values(), runner.stop([r.handle for r in running.values()])):
            ended(run.row, status, message)
        raise


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them for a child."""
    import torch

    count = torch.cuda.device_count()
    named = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (named or [str(i) for i in range(count)])[:count]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class _Process:
    proc: subprocess.Popen
    offset: int
    log: Path
    gpu: str | None


class LocalRows:
    """``--parallel N``: up to N rows at once as processes of this machine, each on a GPU
    of its own or, without GPUs, on ``cores // N`` torch threads."""

    resubmits = 0  # a crashed row is said, as one at a time: a rerun continues it

    def __init__(self, n: int, out: Path):
        gpus = visible_gpus()
        if gpus and n > len(gpus):
            raise UserError(f"--parallel {n}: this machine has {len(gpus)} GPU{'s' * (len(gpus) > 1)}, one per row")
        self.n, self.out, self.free_gpus, self.running = n, out, gpus[:n], 0
        self.overrides = () if gpus else (f"train.num_threads={max(_cores() // n, 1)}",)

    def free(self) -> bool:
        return self.running < self.n

    def start(self, name: str, cmd: list[str]) -> _Process:
        env, gpu = dict(os.environ), (self.free_gpus.pop(0) if self.free_gpus else None)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log = self.out / name / LOG
        proc, offset = start_logged(cmd, log, env)
        self.running += 1
        print(f"{name}: started{f' on GPU {gpu}' if gpu is not None else ''}; log {log}", flush=True)
        return _Process(proc, offset, log, gpu)

    def poll(self, p: _Process) -> tuple[int, str | None] | None:
        if p.proc.poll() is None:
            return None
        self.running -= 1
        if p.gpu is not None:
            self.free_gpus.append(p.gpu)
        return p.proc.returncode, error_in_log(p.log, p.offset)

    def stop(self, running: list[_Process]) -> list[tuple[int, str | None]]:
        """SIGINT to each row still running (a Ctrl-C in the terminal sent it too: one
        request), then waits while each writes its checkpoint."""
        for p in running:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGINT)
        return [(p.proc.wait(), error_in_log(p.log, p.offset)) for p in running]


class SlurmRows:
    """``--slurm PARTITION``: each row a submitit job of ``--slurm-gpus`` GPUs for
    ``--slurm-time``, its files in ``<out>/slurm``; ``--slurm local`` runs the jobs on this
    machine with submitit's ``LocalExecutor`` (the tests' way to the real code path)."""

    resubmits = RESUBMITS
    overrides = ()

    def __init__(self, args, out: Path, table_name: str):
        try:
            import submitit
        except ImportError:
            raise UserError(f"--slurm {args.slurm} needs submitit: pip install submitit") from None
        cluster = "local" if args.slurm == "local" else "slurm"
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError(f"--slurm {args.slurm}: no sbatch on this machine (run the ladder on a Slurm login node; "
                            "--slurm local runs the jobs here)")
        self.out, self.table_name = out, table_name
        self.executor = submitit.AutoExecutor(folder=out / "slurm", cluster=cluster)
        gpus = 1 if args.slurm_gpus is None else args.slurm_gpus
        self.executor.update_parameters(timeout_min=minutes(args.slurm_time or SLURM_TIME), gpus_per_node=gpus,
                                        cpus_per_task=args.slurm_cpus or SLURM_CPUS_PER_GPU * max(gpus, 1),
                                        mem_gb=args.slurm_mem, slurm_partition=args.slurm)

    def free(self) -> bool:
        return True  # the queue decides when jobs run

    def start(self, name: str, cmd: list[str]):
        self.executor.update_parameters(name=f"{self.table_name}-{name}")
        log = self.out / name / LOG
        job = self.executor.submit(RowJob(cmd, log))
        print(f"{name}: submitted job {job.job_id}; log {log}", flush=True)
        return job

    def poll(self, job) -> tuple[int | None, str | None] | None:
        if not job.done():
            return None
        try:
            return tuple(job.result())
        except Exception as e:  # noqa: BLE001 - submitit's UncompletedJobError (died), FailedJobError
            print(f"job {job.job_id} ended without the row's exit status ({type(e).__name__}; submitit's log: "
                  f"{job.paths.stderr})", file=sys.stderr, flush=True)
            return None, None

    def stop(self, running: list) -> list[tuple[None, None]]:
        """Cancels the jobs still running (each training gets SIGTERM and writes its checkpoint)."""
        for job in running:
            job.cancel(check=False)
        if running:
            print(f"cancelled job{'s' * (len(running) > 1)} {' '.join(j.job_id for j in running)} (each training "
                  "writes a checkpoint)", file=sys.stderr, flush=True)
        return [(None, None)] * len(running)


def _preemption_signal() -> signal.Signals:
    import submitit

    return signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]


def _wait(proc: subprocess.Popen, preempt: signal.Signals) -> int:
    """``proc``'s exit status. :meth:`RowJob.checkpoint` polls ``proc`` from the handler of
    ``preempt``: Popen's lock must not be held by this frame then, so the signal waits
    out each poll here."""
    while True:
        signal.pthread_sigmask(signal.SIG_BLOCK, {preempt})
        try:
            status = proc.poll()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {preempt})
        if status is not None:
            return status
        time.sleep(POLL_S)


class RowJob:
    """One row as a submitit job: runs its command line with its output appended to the
    row's log and returns ``(exit status, message of its last "error: " line)``.

    Checkpointable as submitit's ``helpers.Checkpointable`` is (submitit looks for a
    ``checkpoint`` method; the class is not imported so that the ladder runs without
    submitit). On preemption submitit calls :meth:`checkpoint` from its signal handler:
    the training gets SIGTERM, stops at its next step and writes a checkpoint, and the row
    is requeued with ``--resume auto``. The training ignores submitit's preemption signal (a cluster
    may send it to every process of the job) and dies with this process, as every
    process of a killed Slurm job does.
    """

    def __init__(self, cmd: Sequence[str], log: Path):
        self.cmd, self.log, self._proc = list(cmd), Path(log), None

    def __call__(self) -> tuple[int, str | None]:
        from ctypes import CDLL

        libc = CDLL(None) if sys.platform.startswith("linux") else None
        preempt = _preemption_signal()

        def child() -> None:
            signal.signal(preempt, signal.SIG_IGN)
            if libc is not None:
                libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))

        proc, offset = start_logged(self.cmd, self.log, preexec_fn=child)
        with proc:
            self._proc = proc
            try:
                return _wait(proc, preempt), error_in_log(self.log, offset)
            except KeyboardInterrupt:  # the job cancelled (the local executor's way): stop with a checkpoint
                proc.send_signal(signal.SIGTERM)
                proc.wait()  # Popen's exit would wait a quarter of a second, then this process's exit kill it
                raise

    def checkpoint(self):
        """Stops the training at its next step (it writes a checkpoint) and resubmits the
        row with ``--resume auto`` (a row's evaluation as it was)."""
        from submitit.helpers import DelayedSubmission

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            while proc.poll() is None:
                time.sleep(0.1)
        cmd = self.cmd
        if "gssl_fast.train" in cmd and "--resume" not in cmd:  # a row's evaluation (gssl_fast.evaluate) starts again
            cmd = [*cmd, "--resume", "auto"]
        return DelayedSubmission(RowJob(cmd, self.log))

    def __getstate__(self) -> dict:
        return {"cmd": self.cmd, "log": self.log}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _proc=None)
