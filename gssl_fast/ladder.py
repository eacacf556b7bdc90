"""Run the rows of a paper's table one after another and write the table back.

    python -m gssl_fast.ladder recipes/tables/table1.toml [--rows NAME ...] [--set KEY=VALUE ...]
                               [--out DIR] [--launch "ACCELERATE LAUNCH ARGS"] [--dry-run]

A table file lists its rows: a name, the base recipe, the ``--set`` overrides and the
paper's numbers; rows that a paper only cites from other work carry ``cited = true`` and
are not run. Each row is an ordinary run folder ``DIR/<row>`` (default DIR:
``runs/tables/<table>``): a finished row (marked ``DIR/<row>/finished``) is skipped, an
interrupted one continues with ``--resume auto``. ``--launch`` passes settings to
``accelerate launch`` (without it each row runs as one process). At the end, and after
every row, ``DIR/table.md`` and ``DIR/table.csv`` hold, per metric: the paper's number,
this run's best and final values, and the gap (best - paper). ``--dry-run`` prints one
line per row: its name, the paper's numbers, and the command it would run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gssl_fast.config import tomllib
from gssl_fast.errors import UserError

FINISHED = "finished"
USAGE_EXIT = 2


@dataclass(frozen=True)
class Row:
    name: str
    recipe: str = ""  # a recipe stem of recipes/, or a path relative to the table file
    set: tuple[str, ...] = ()  # --set overrides, applied before the command line's
    paper: tuple[float | None, ...] = ()  # the paper's numbers, one per metric (nan in the file: not reported)
    cited: bool = False  # a number the paper cites from other work: listed, not run


@dataclass(frozen=True)
class Table:
    path: Path
    title: str
    metrics: tuple[str, ...]  # metrics.jsonl fields compared with the paper
    rows: tuple[Row, ...]


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(allowed)}")


def load_table(path: str | Path) -> Table:
    """Reads and checks a table file (every row's recipe is checked when it runs)."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read table file {path}: {e}") from None
    _check_keys(d, ("title", "metrics", "rows"), str(path))
    metrics = tuple(d.get("metrics", ("best_val_acc1",)))
    rows, names = [], set()
    for i, r in enumerate(d.get("rows", [])):
        where = f"{path} row {i + 1}"
        _check_keys(r, ("name", "recipe", "set", "paper", "cited"), where)
        paper = r.get("paper", ())
        paper = tuple(paper) if isinstance(paper, list) else (paper,)
        if len(paper) != len(metrics):
            raise UserError(f"{where}: paper must hold {len(metrics)} numbers (metrics {list(metrics)}), got {paper}")
        row = Row(name=r["name"], recipe=r.get("recipe", ""), set=tuple(r.get("set", ())),
                  paper=tuple(None if math.isnan(p) else float(p) for p in paper), cited=bool(r.get("cited", False)))
        if row.name in names or "/" in row.name:
            raise UserError(f"{where}: row names must be unique and without '/', got {row.name!r}")
        if not row.cited and not row.recipe:
            raise UserError(f"{where} ({row.name}) needs a recipe, or cited = true")
        names.add(row.name)
        rows.append(row)
    return Table(path=path, title=d.get("title", path.stem), metrics=metrics, rows=tuple(rows))


def recipe_path(table: Table, row: Row) -> Path:
    beside = table.path.parent / row.recipe
    if beside.suffix == ".toml" and beside.is_file():
        return beside
    return Path(__file__).resolve().parents[1] / "recipes" / f"{row.recipe}.toml"


def command(table: Table, row: Row, run_dir: Path, overrides, launch: str | None) -> list[str]:
    """The command that trains ``row`` into ``run_dir`` (continuing it when it has checkpoints)."""
    from gssl_fast.checkpoint import list_checkpoints

    head = ["accelerate", "launch", *shlex.split(launch)] if launch is not None else [sys.executable]
    cmd = [*head, "-m", "gssl_fast.train", str(recipe_path(table, row)), "--out", str(run_dir)]
    for item in (*row.set, *overrides):
        cmd += ["--set", item]
    if list_checkpoints(run_dir) or (run_dir / "stages").is_dir():  # a staged method keeps them per stage
        cmd += ["--resume", "auto"]
    return cmd


def results(run_dir: Path, metric: str) -> tuple[float | None, float | None]:
    """(best, final) of ``metric`` over the epochs logged in ``run_dir``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None
    values = [r[metric] for r in map(json.loads, path.read_text().splitlines()) if r.get(metric) is not None]
    return (max(values), values[-1]) if values else (None, None)


def _fmt(v) -> str:
    return "" if v is None else f"{v:.2f}"


def write_table(table: Table, out: Path) -> None:
    """``out/table.md`` and ``out/table.csv``: per row and metric, paper / best / final / gap."""
    header = ["row"] + [f"{m} {c}" for m in table.metrics for c in ("paper", "best", "final", "gap")]
    lines = []
    for row in table.rows:
        cells = [row.name + (" (cited)" if row.cited else "")]
        for metric, paper in zip(table.metrics, row.paper):
            best, final = (None, None) if row.cited else results(out / row.name, metric)
            gap = best - paper if best is not None and paper is not None else None
            cells += [_fmt(paper), _fmt(best), _fmt(final), _fmt(gap)]
        lines.append(cells)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *lines])
    md = [f"# {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in lines]
    (out / "table.md").write_text("\n".join(md) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gssl_fast.ladder", description=__doc__.splitlines()[0])
    p.add_argument("table", help="table file, e.g. recipes/tables/table1.toml")
    p.add_argument("--rows", nargs="+", default=None, metavar="NAME", help="run only these rows")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key in every row (after the row's own); repeatable")
    p.add_argument("--out", default=None, help="folder of the row runs and the table (default runs/tables/<table>)")
    p.add_argument("--launch", default=None, metavar="ARGS", help='run rows with `accelerate launch ARGS`, e.g. '
                   '"--multi_gpu --num_processes 4"')
    p.add_argument("--dry-run", action="store_true", help="print each row's paper numbers and command; run nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        table = load_table(args.table)
        known = {r.name for r in table.rows}
        unknown = sorted(set(args.rows or ()) - known)
        if unknown:
            raise UserError(f"--rows {unknown[0]!r} is not a row of {args.table}; rows: {', '.join(sorted(known))}")
        out = Path(args.out) if args.out else Path("runs") / "tables" / table.path.stem
        failed = run_rows(table, out, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    return 1 if failed else 0


def run_rows(table: Table, out: Path, args) -> list[str]:
    """Runs (or with ``--dry-run`` prints) the selected rows; returns the names that failed."""
    failed = []
    for row in table.rows:
        if args.rows and row.name not in args.rows:
            continue
        paper = " ".join(f"{m} {_fmt(p) or '-'}" for m, p in zip(table.metrics, row.paper))
        if row.cited:
            print(f"{row.name}  paper {paper}  cited, not run", flush=True)
            continue
        run_dir = out / row.name
        cmd = command(table, row, run_dir, args.set, args.launch)
        if args.dry_run:
            print(f"{row.name}  paper {paper}  {shlex.join(cmd)}", flush=True)
            continue
        if (run_dir / FINISHED).exists():
            print(f"{row.name}: finished, skipped", flush=True)
            continue
        print(f"{row.name}: {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode == 0:
            (run_dir / FINISHED).touch()
        else:
            failed.append(row.name)
            print(f"{row.name}: failed; rerun the ladder to continue it", file=sys.stderr, flush=True)
        write_table(table, out)
    if not args.dry_run:
        write_table(table, out)
        print(f"table: {out / 'table.md'}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
