"""Run the rows of a paper's table, one after another or side by side, and write the table back.

    python -m gssl_fast.ladder recipes/tables/table1.toml [--rows NAME ...] [--set KEY=VALUE ...]
                               [--out DIR] [--launch "ACCELERATE LAUNCH ARGS"] [--dry-run]
                               [--parallel N | --slurm PARTITION [--slurm-gpus N] [--slurm-time T] [--slurm-mem GB]]

A table file lists its rows: a name, the base recipe, the ``--set`` overrides and the
paper's numbers; rows that a paper only cites from other work carry ``cited = true`` and
are not run. Each row is an ordinary run folder ``DIR/<row>`` (default DIR:
``runs/tables/<table>``): a finished row (marked ``DIR/<row>/finished``) is skipped, an
interrupted one continues with ``--resume auto``. ``--launch`` passes settings to
``accelerate launch`` (without it each row runs as one process). At the end, and after
every row, ``DIR/table.md`` and ``DIR/table.csv`` hold, per metric: the paper's number,
this run's best and final values, the gap (best - paper) and the ``--set`` overrides the
row ran with; rows run on other data than the paper's (``--set data.name=shapes``) retitle
the table after that data. ``--dry-run`` prints one line per row: its name, the paper's
numbers, and the command it would run. ``--parallel N`` runs N rows at once on this
machine and ``--slurm PARTITION`` submits each row as a job (``gssl_fast.ladder_jobs``);
the table is then written by the ladder alone as each row ends.

Every row's recipe is loaded with its overrides before any row runs: a recipe error
stops the ladder (exit status 2), said once when every row has it. A row that fails with
a recipe or data error is not "continued" by a rerun; at the end, rows that all failed
with the same such error are summed up in one line (exit status 2).
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gssl_fast import ladder_jobs
from gssl_fast.config import load_recipe, tomllib
from pipelines.atomic import write_text_atomic
from pipelines.errors import UserError

FINISHED = "finished"
RECORD = "ladder.json"  # in a row's run folder: the --set overrides of its latest start
USAGE_EXIT = 2
TAIL_CHARS = 1 << 16  # of a row's stderr, kept to find its "error: " line


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
    from gssl_fast.run.folder import Earlier

    # -q: a row's own one-line error, without Accelerate's traceback under it.
    head = ["accelerate", "launch", "-q", *shlex.split(launch)] if launch is not None else [sys.executable]
    cmd = [*head, "-m", "gssl_fast.train", str(recipe_path(table, row)), "--out", str(run_dir)]
    for item in (*row.set, *overrides):
        cmd += ["--set", item]
    if Earlier.of(run_dir):  # checkpoints, or a staged method's stages
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


def _data_words(data) -> str:
    """What a ``DataConfig`` trains on, in words: ``cifar10 32px, long-tailed (exp, rho 0.01)``."""
    words = f"{data.name} {data.image_size}px"
    return words + (f", long-tailed ({data.longtail}, rho {data.imbalance_ratio:g})" if data.longtail != "none" else "")


def _data_of(path: Path, overrides=()) -> str | None:
    try:
        return _data_words(load_recipe(path, overrides).data)
    except (UserError, OSError):  # an unreadable or older recipe: nothing to compare
        return None


def title_lines(table: Table, out: Path) -> list[str]:
    """The heading of ``table.md``: the table file's title when every row that ran used
    the paper's data, else the data the rows ran on, so that a run on ``shapes`` is not
    headed "long-tailed CIFAR" (its gap to the paper's number compares different data)."""
    ran = {row.name: _data_of(out / row.name / "config.toml") for row in table.rows if not row.cited}
    other = {row.name: ran[row.name] for row in table.rows if ran.get(row.name)
             and ran[row.name] != _data_of(recipe_path(table, row), row.set)}
    if not other:
        return [f"# {table.title}"]
    some = "" if len(other) == sum(1 for words in ran.values() if words) else "some "
    return [f"# {table.path.stem} rows, {some}run on {'; '.join(sorted(set(other.values())))}", "",
            f"Not the paper's data: the paper's numbers are those of \"{table.title}\", so the gaps of the rows run "
            f"on other data ({', '.join(other)}) compare different data."]


def ran_with(run_dir: Path) -> list[str]:
    """The ``--set`` overrides of the row's latest start (the table's and the ladder's);
    none for a row that has not run."""
    try:
        return list(json.loads((run_dir / RECORD).read_text())["set"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_table(table: Table, out: Path) -> None:
    """``out/table.md`` and ``out/table.csv``: per row and metric, paper / best / final /
    gap, and the overrides the row ran with."""
    header = ["row"] + [f"{m} {c}" for m in table.metrics for c in ("paper", "best", "final", "gap")] + ["overrides"]
    lines, md_sets = [], []
    for row in table.rows:
        cells = [row.name + (" (cited)" if row.cited else "")]
        for metric, paper in zip(table.metrics, row.paper):
            best, final = (None, None) if row.cited else results(out / row.name, metric)
            gap = best - paper if best is not None and paper is not None else None
            cells += [_fmt(paper), _fmt(best), _fmt(final), _fmt(gap)]
        items = [] if row.cited else ran_with(out / row.name)
        lines.append([*cells, shlex.join(items)])
        md_sets.append([*cells, " ".join(f"`{item}`".replace("|", "\\|") for item in items)])
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *lines])
    write_text_atomic(out / "table.csv", text.getvalue())  # whole or not at all: rows end at any time
    md = [*title_lines(table, out), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in md_sets]
    write_text_atomic(out / "table.md", "\n".join(md) + "\n")


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
    ladder_jobs.add_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ladder_jobs.check_args(args)
        table = load_table(args.table)
        known = {r.name for r in table.rows}
        unknown = sorted(set(args.rows or ()) - known)
        if unknown:
            raise UserError(f"--rows {unknown[0]!r} is not a row of {args.table}; rows: {', '.join(sorted(known))}")
        out = Path(args.out) if args.out else Path("runs") / "tables" / table.path.stem
        todo = [row for row in table.rows if not row.cited and (not args.rows or row.name in args.rows)
                and not (out / row.name / FINISHED).exists()]
        if say_errors(recipe_errors(table, todo, args.set, out), ran=False):
            return USAGE_EXIT
        ran, failed = run_rows(table, out, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    if failed and len(failed) == len(ran) and say_errors(failed, ran=True):
        return USAGE_EXIT
    if failed:
        print(f"{len(failed)} of {len(ran)} rows failed: {', '.join(f.row for f in failed)}", file=sys.stderr)
    return 1 if failed else 0


@dataclass(frozen=True)
class Failure:
    row: str
    message: str | None  # a recipe or data error (the "error: " line of train); None: crashed or interrupted
    same_as: str | None = None  # the message without what names the row, to tell one error from many


def _without_row(message: str, table: Table, row: Row, out: Path) -> str:
    """``message`` less the words that name ``row`` (its recipe, its own overrides, its run
    folder): the same mistake in every row then reads the same."""
    for word in sorted({str(recipe_path(table, row)), str(out / row.name), *row.set}, key=len, reverse=True):
        message = message.replace(word, "\u2026")
    return re.sub("\u2026(\\s+\u2026)+", "\u2026", message)


def recipe_errors(table: Table, rows: list[Row], overrides, out: Path) -> list[Failure]:
    """Each row's recipe loaded with its overrides as its run will load it: the rows
    whose recipe is in error, with the error."""
    errors = []
    for row in rows:
        try:
            load_recipe(recipe_path(table, row), [*row.set, *overrides])
        except UserError as e:
            errors.append(Failure(row.name, str(e), _without_row(str(e), table, row, out)))
    return errors


def say_errors(errors: list[Failure], *, ran: bool) -> bool:
    """Prints recipe or data errors: once when every row has the same one. False (nothing
    said) when one of ``errors`` is not such an error, as a crash is not."""
    if not errors or any(e.message is None for e in errors):
        return False
    first = f"({errors[0].row}: {errors[0].message})"
    if len(errors) > 1 and len({e.same_as for e in errors}) == 1:
        said = "failed with the same error" if ran else "has the same recipe error, so no row ran"
        print(f"error: every row {said} {first}", file=sys.stderr)
        return True
    for e in errors:
        print(f"error: {e.row}: {e.message}", file=sys.stderr)
    if not ran and len(errors) > 1:
        print(f"error: {len(errors)} rows have recipe errors, so no row ran", file=sys.stderr)
    return True


def run_command(cmd: list[str]) -> tuple[int, str | None]:
    """Runs ``cmd`` with its stderr passed on as it comes; returns its exit status and the
    message of its last ``error: `` line (train's one line for a recipe or data error)."""
    decode, tail = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
    with subprocess.Popen(cmd, stderr=subprocess.PIPE) as proc:
        try:
            for chunk in iter(lambda: proc.stderr.read1(1 << 14), b""):
                text = decode.decode(chunk)
                sys.stderr.write(text)
                sys.stderr.flush()
                tail = (tail + text)[-TAIL_CHARS:]
        except KeyboardInterrupt:
            # The row got the same SIGINT and is writing its checkpoint: a closed stderr would break that.
            for chunk in iter(lambda: proc.stderr.read1(1 << 14), b""):
                sys.stderr.write(decode.decode(chunk))
            proc.wait()
            raise
    return proc.returncode, ladder_jobs.last_error(tail)


def run_row(table: Table, row: Row, out: Path, args) -> tuple[int, str | None]:
    """Trains one row here, its output passed on; its exit status and error message."""
    cmd = command(table, row, out / row.name, args.set, args.launch)
    print(f"{row.name}: {shlex.join(cmd)}", flush=True)
    try:
        return run_command(cmd)
    except KeyboardInterrupt:
        record(row, out, args)
        raise


def record(row: Row, out: Path, args) -> None:
    """Keeps the overrides the row ran with (``RECORD``) once train recorded a recipe."""
    run_dir = out / row.name
    if (run_dir / "config.toml").is_file():
        write_text_atomic(run_dir / RECORD, json.dumps({"set": [*row.set, *args.set]}) + "\n")


def row_ended(table: Table, row: Row, out: Path, args, status: int | None, message: str | None) -> Failure | None:
    """Records a row that ended with exit ``status`` (None: its job died without one):
    None when it finished, else how it failed."""
    record(row, out, args)
    if status == 0:
        (out / row.name / FINISHED).touch()
        return None
    # One process exits USAGE_EXIT on a recipe or data error; `accelerate launch` turns every failure into 1.
    if message is not None and (status == USAGE_EXIT or args.launch is not None):
        return Failure(row.name, message, _without_row(message, table, row, out))
    return Failure(row.name, None)


def _runner(table: Table, out: Path, args):
    if args.slurm is not None:
        return ladder_jobs.SlurmRows(args, out, table.path.stem)
    return ladder_jobs.LocalRows(args.parallel, out)


def run_rows(table: Table, out: Path, args) -> tuple[list[str], list[Failure]]:
    """Runs (or with ``--dry-run`` prints) the selected rows, one at a time or side by
    side; returns the rows that ran and those that failed."""
    todo, failed = [], []
    for row in table.rows:
        if args.rows and row.name not in args.rows:
            continue
        paper = " ".join(f"{m} {_fmt(p) or '-'}" for m, p in zip(table.metrics, row.paper))
        if row.cited:
            print(f"{row.name}  paper {paper}  cited, not run", flush=True)
            continue
        if args.dry_run:
            cmd = command(table, row, out / row.name, args.set, args.launch)
            print(f"{row.name}  paper {paper}  {shlex.join(cmd)}", flush=True)
            continue
        if (out / row.name / FINISHED).exists():
            print(f"{row.name}: finished, skipped", flush=True)
            continue
        todo.append(row)

    def ended(row: Row, status: int | None, message: str | None) -> None:
        failure = row_ended(table, row, out, args, status, message)
        if failure is not None:
            failed.append(failure)
            earlier = next((f.row for f in failed[:-1] if f.same_as and f.same_as == failure.same_as), None)
            why = ("; rerun the ladder to continue it" if failure.message is None else
                   f" with the same error as {earlier}" if earlier else " with the error above")
            print(f"{row.name}: failed{why}", file=sys.stderr, flush=True)
        write_table(table, out)

    if args.dry_run:
        return [], []
    if todo and (args.parallel > 1 or args.slurm is not None):
        ladder_jobs.side_by_side(todo, _runner(table, out, args), lambda row, extra: command(
            table, row, out / row.name, [*extra, *args.set], args.launch), ended)
    else:
        for row in todo:
            ended(row, *run_row(table, row, out, args))
    write_table(table, out)
    print(f"table: {out / 'table.md'}", flush=True)
    return [row.name for row in todo], failed


if __name__ == "__main__":
    sys.exit(main())
