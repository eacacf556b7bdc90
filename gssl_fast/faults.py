"""Named points where a test can kill the run, to prove a resume survives a crash there.

``GSSL_FAST_CRASH_AT="step:7"`` makes the 7th passage through ``crash_point("step")``
kill this process with SIGKILL, as an out-of-memory killer or a lost node would: nothing
is flushed, nothing cleaned up. Unset (always, outside tests), a point costs one dict
lookup. Points: ``data`` (loaders built), ``step`` (after an optimizer step), ``evaluate``
(inside evaluation), ``checkpoint`` (a checkpoint's bytes written, not yet renamed),
``stage`` (a stage done, the next not started). ``step:7@1`` kills only the process of
rank 1 (``RANK`` of the launcher), leaving the others of a multi-process run to notice.
``GSSL_FAST_CRASH_SIGNAL=TERM`` sends SIGTERM instead, as a scheduler preempting the run.
"""

from __future__ import annotations

import os
import signal

_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kills this process here on the n-th passage when ``GSSL_FAST_CRASH_AT`` says ``name:n``
    (``name:n@r``: only in the process of rank ``r``)."""
    target = os.environ.get("GSSL_FAST_CRASH_AT")
    if not target:
        return
    target, _, rank = target.partition("@")
    point, _, nth = target.partition(":")
    if point != name or (rank and rank != os.environ.get("RANK", "0")):
        return
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    if _COUNTS[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("GSSL_FAST_CRASH_SIGNAL", "KILL")))
