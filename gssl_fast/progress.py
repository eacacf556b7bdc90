"""Per-epoch progress display for the main process: a tqdm bar on a terminal, plain
lines (about ten per epoch) in logs and CI, where carriage returns make a mess."""

from __future__ import annotations

import sys
import time


class Progress:
    """``update(n_images, stats)`` after each step; ``close()`` at the end of the epoch.

    ``stats`` is a callable returning ``{name: float}``, called only when a value is
    shown, so that a CUDA run does not wait for the GPU at every step.
    """

    def __init__(self, total_steps: int, *, desc: str, enabled: bool = True, stream=None):
        self.total, self.desc, self.enabled = total_steps, desc, enabled
        self.stream = stream or sys.stderr
        self.steps = self.images = 0
        self.start = time.perf_counter()
        self.bar = None
        self.next_line = max(total_steps // 10, 1)
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc=desc, file=self.stream, dynamic_ncols=True, leave=True)

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def _text(self, stats) -> dict[str, str]:
        text = {k: f"{v:.4g}" for k, v in (stats() if stats else {}).items()}
        text["img/s"] = f"{self.rate():.0f}"
        return text

    def update(self, n_images: int, stats=None) -> None:
        self.steps += 1
        self.images += n_images
        if not self.enabled:
            return
        last = self.steps == self.total
        if self.bar is not None:
            if self.steps % 10 == 0 or last:
                self.bar.set_postfix(self._text(stats), refresh=False)
            self.bar.update(1)
        elif self.steps % self.next_line == 0 or last:
            fields = " ".join(f"{k} {v}" for k, v in self._text(stats).items())
            print(f"{self.desc} step {self.steps}/{self.total} {fields}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
