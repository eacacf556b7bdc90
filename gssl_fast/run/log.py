"""The per-epoch log of a run: ``metrics.jsonl``, one JSON object a line."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per epoch to ``metrics.jsonl``, flushed at once so a
    killed run keeps every finished epoch. ``tags``: fields that mark this log's rows
    among others in the same file (a stage of a staged method writes
    ``{"stage": name}``); truncation leaves rows with other tags alone. An untagged log
    owns every row."""

    def __init__(self, path: Path, tags: dict | None = None):
        self.path, self._tags = Path(path), dict(tags or {})

    def _mine(self, row: dict) -> bool:
        return all(row.get(k, "") == v for k, v in self._tags.items())

    def truncate_after(self, epoch: int) -> None:
        """Drops this log's lines of epochs > ``epoch`` (left by a run killed after
        logging but before its checkpoint landed), so a resumed run logs each epoch once."""
        if not self.path.exists():
            return
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if not self._mine(r) or r["epoch"] <= epoch]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def append(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        """Every row of the file, whatever its tags."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def tags(self) -> dict:
        """The fields that mark this log's rows among the others of the file."""
        return dict(self._tags)

    def read_mine(self) -> list[dict]:
        """The rows of this log (its tags)."""
        return [r for r in self.read() if self._mine(r)]
