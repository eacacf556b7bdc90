"""Run the rows of a paper's table, one after another or side by side, and write the table back.

    python -m gssl_fast.ladder recipes/tables/table1.toml [--rows NAME ...] [--set KEY=VALUE ...]
                               [--out DIR] [--launch "ACCELERATE LAUNCH ARGS"] [--dry-run]
                               [--parallel N | --slurm PARTITION [--slurm-gpus N] [--slurm-time T] [--slurm-mem GB]]

A table file lists its rows: a name, the base recipe, the ``--set`` overrides (the
table's ``set``, then the row's) and the paper's numbers; rows that a paper only cites
from other work carry ``cited = true`` and are not run. Its ``metrics`` say how each
number is made, the paper's protocol (:class:`Metric`): a field of ``metrics.jsonl``
reported as the best epoch's value (``report = "best"``, the default), the last one
(``"final"``) or the median of the last ``k`` (``"median_last_k"``), or a field that
``python -m gssl_fast.evaluate ROW <evaluate>`` prints on the row's final checkpoint,
run by the ladder once the row has trained (one call per row with the union of its
metrics' options, kept in ``DIR/<row>/evaluate.json`` and run again only when the
checkpoint changes). Each row is an ordinary run folder ``DIR/<row>`` (default DIR:
``runs/tables/<table>``): a finished row (marked ``DIR/<row>/finished``) is skipped, an
interrupted one continues with ``--resume auto``. ``--launch`` passes settings to
``accelerate launch`` (without it each row runs as one process). At the end, and after
every row, ``DIR/table.md`` and ``DIR/table.csv`` hold, per metric: the paper's number,
this run's number(s) by the metric's protocol (best and final for "best"), the gap
(number - paper) and the ``--set`` overrides the row ran with; ``table.md`` says under
the table which protocol made each column. Rows run on other data than the paper's
(``--set data.name=shapes``) retitle the table after that data. ``--dry-run`` prints one
line per row: its name, the paper's numbers, and the command it would run (and the
evaluation after it). ``--parallel N`` runs N rows at once on this machine and ``--slurm
PARTITION`` submits each row as a job (``gssl_fast.ladder_jobs``), then the rows'
evaluations the same way; the table is then written by the ladder alone as each ends.

Every row's recipe is loaded with its overrides before any row runs: a recipe error
stops the ladder (exit status 2), said once when every row has it. A row that fails with
a recipe or data error is not "continued" by a rerun; at the end, rows that all failed
with the same such error are summed up in one line (exit status 2).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import csv
import io
import json
import math
import re
import shlex
import statistics
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
EVALUATED = "evaluate.json"  # in a row's run folder: what gssl_fast.evaluate printed, per option list
REPORTS = ("best", "final", "median_last_k")  # how the values a field took over the epochs make one number
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
class Metric:
    """A metric of a table and the protocol that makes its number, as the paper made it.

    ``report``: how the values ``field`` took in ``metrics.jsonl`` (one per evaluation)
    make one number: "best" (the highest; the last beside it), "final" (the last) or
    "median_last_k" (the median of the last ``k``, of all while fewer are logged).
    ``evaluate``: instead, ``field`` of what ``python -m gssl_fast.evaluate ROW
    <evaluate>`` prints on the row's final checkpoint (the table's :attr:`Table.evaluate`).
    """

    field: str
    report: str = "best"
    k: int = 0
    evaluate: tuple[str, ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The row's numbers of this metric, each a column between the paper's and the gap."""
        if self.evaluate:
            return ("evaluate",)
        if self.report == "median_last_k":
            return (f"median_last_{self.k}",)
        return ("best", "final") if self.report == "best" else ("final",)


@dataclass(frozen=True)
class Table:
    path: Path
    title: str
    metrics: tuple[Metric, ...]  # compared with the paper, each by its protocol
    rows: tuple[Row, ...]

    @property
    def evaluate(self) -> tuple[str, ...]:
        """The options of a row's one ``gssl_fast.evaluate`` call: those of every metric,
        each option once; () when no metric is evaluated."""
        return tuple(a for option in dict.fromkeys(o for m in self.metrics for o in _options(m.evaluate))
                     for a in option)


def _options(args) -> list[tuple[str, ...]]:
    """A command line's options with their values: ``["--attack", "pgd20", "--calibration"]``
    -> ``[("--attack", "pgd20"), ("--calibration",)]``."""
    options = []
    for a in args:
        if a.startswith("-") or not options:
            options.append([a])
        else:
            options[-1].append(a)
    return [tuple(o) for o in options]


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(allowed)}")


def _is_count(k) -> bool:
    return isinstance(k, int) and not isinstance(k, bool) and k >= 1


def _check_evaluate(args, where: str) -> None:
    """``args`` parse as options of ``python -m gssl_fast.evaluate``, else one line naming ``where``."""
    from gssl_fast.evaluate import parse_args

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            parse_args(["ROW", *args])
    except SystemExit:
        why = (said.getvalue().strip().splitlines() or [""])[-1].split("error: ", 1)[-1]
        raise UserError(f"{where}: evaluate must hold options of python -m gssl_fast.evaluate, got {args} "
                        f"({why})") from None


def _metric(entry, where: str, report, k) -> Metric:
    """One ``metrics`` entry: a field name (reported by the table's ``report`` and ``k``)
    or an inline table ``{ field, report, k }`` or ``{ field, evaluate }``."""
    if isinstance(entry, str):
        entry = {"field": entry}
    elif not isinstance(entry, dict):
        raise UserError(f"{where} must be a field name or an inline table such as {{ field = \"val_acc1\", "
                        f"report = \"final\" }}, got {entry!r}")
    _check_keys(entry, ("field", "report", "k", "evaluate"), where)
    field = entry.get("field")
    if not isinstance(field, str) or not field:
        raise UserError(f"{where}: field must name a metrics.jsonl field (or one gssl_fast.evaluate prints), "
                        f"got {field!r}")
    if "evaluate" in entry:
        args = entry["evaluate"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise UserError(f"{where}: evaluate must be a list of options of python -m gssl_fast.evaluate, "
                            f"e.g. [\"--attack\", \"pgd20\"], got {args!r}")
        for key in ("report", "k"):
            if key in entry:
                raise UserError(f"{where}: {key} does not go with evaluate, which gives one number, of the final "
                                f"checkpoint (got {key} = {entry[key]!r})")
        _check_evaluate(args, where)
        return Metric(field, report="final", evaluate=tuple(args))
    report, k = entry.get("report", report), entry.get("k", k)
    if report not in REPORTS:
        raise UserError(f"{where}: report must be one of {', '.join(map(repr, REPORTS))}, got {report!r}")
    if report == "median_last_k" and not _is_count(k):
        raise UserError(f"{where}: report = \"median_last_k\" needs k, how many of the last values, a whole "
                        f"number >= 1, got {k!r}")
    if "k" in entry and report != "median_last_k":
        raise UserError(f"{where}: k counts the values of report = \"median_last_k\", not of {report!r}")
    return Metric(field, report, k if report == "median_last_k" else 0)


def load_table(path: str | Path) -> Table:
    """Reads and checks a table file (every row's recipe is checked when it runs)."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read table file {path}: {e}") from None
    _check_keys(d, ("title", "metrics", "report", "k", "set", "rows"), str(path))
    report, k, common = d.get("report", "best"), d.get("k"), d.get("set", [])
    if report not in REPORTS:
        raise UserError(f"{path}: report must be one of {', '.join(map(repr, REPORTS))}, got {report!r}")
    if k is not None and not _is_count(k):
        raise UserError(f"{path}: k must be a whole number >= 1 (how many of the last values), got {k!r}")
    if not isinstance(common, list) or not all(isinstance(item, str) for item in common):
        raise UserError(f"{path}: set must be a list of KEY=VALUE overrides for every row, got {common!r}")
    entries = d.get("metrics", ["best_val_acc1"])
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: metrics must be a non-empty list, got {entries!r}")
    metrics = tuple(_metric(e, f"{path} metrics entry {i + 1}", report, k) for i, e in enumerate(entries))
    if k is not None and not any(m.report == "median_last_k" for m in metrics):
        raise UserError(f"{path}: k = {k} counts the values of report = \"median_last_k\", which no metric has")
    fields = [m.field for m in metrics]
    rows, names = [], set()
    for i, r in enumerate(d.get("rows", [])):
        where = f"{path} row {i + 1}"
        _check_keys(r, ("name", "recipe", "set", "paper", "cited"), where)
        paper = r.get("paper", ())
        paper = tuple(paper) if isinstance(paper, list) else (paper,)
        if len(paper) != len(metrics):
            raise UserError(f"{where}: paper must hold {len(metrics)} numbers (metrics {fields}), got {paper}")
        row = Row(name=r["name"], recipe=r.get("recipe", ""), set=(*common, *r.get("set", ())),
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


def logged(run_dir: Path, field: str) -> list[float]:
    """The values ``field`` took in ``run_dir/metrics.jsonl``, in order: one per epoch
    (or evaluation) that logged it."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [float(r[field]) for r in rows if r.get(field) is not None]


def results(run_dir: Path, metric: Metric | str, evaluate: tuple[str, ...] = ()) -> tuple[float | None, ...]:
    """The numbers of ``metric`` (a field name: reported "best") for the row run in
    ``run_dir``, one per ``metric.kinds``; an evaluated metric's from the row's
    ``gssl_fast.evaluate`` call with the options ``evaluate`` (default: its own)."""
    metric = Metric(metric) if isinstance(metric, str) else metric
    if metric.evaluate:
        printed = evaluated(run_dir, evaluate or metric.evaluate) or {}
        return (printed.get(metric.field),)
    values = logged(run_dir, metric.field)
    if not values:
        return (None,) * len(metric.kinds)
    if metric.report == "best":
        return max(values), values[-1]
    if metric.report == "final":
        return (values[-1],)
    return (statistics.median(values[-metric.k:]),)


def labels(metrics: tuple[Metric, ...]) -> list[str]:
    """The heading of each metric's columns: its field, and its protocol when the table
    reports the field twice (``val_acc1 (final)``)."""
    fields = [m.field for m in metrics]
    return [m.field if fields.count(m.field) == 1 else f"{m.field} ({m.kinds[0]})" for m in metrics]


def protocol(metric: Metric, evaluate: tuple[str, ...], label: str = "") -> str:
    """What made the column(s) of ``metric`` (headed ``label``, default its field), in
    words, for ``table.md``; ``evaluate``: the options of the row's evaluation."""
    f, head = metric.field, label or metric.field
    if metric.evaluate:
        split = ("part of the validation split (--limit)" if any(a.startswith("--limit") for a in evaluate)
                 else "the whole validation split")
        return (f"`{head} evaluate`: `{f}` as `python -m gssl_fast.evaluate ROW {shlex.join(evaluate)}` prints it "
                f"on the row's final checkpoint, {split}")
    if metric.report == "best":
        return f"`{head} best`: the highest value of `{f}` logged in metrics.jsonl (`{head} final`: the last)"
    if metric.report == "final":
        return f"`{head} final`: the last value of `{f}` logged in metrics.jsonl"
    return (f"`{head} median_last_{metric.k}`: the median of the last {metric.k} values of `{f}` logged in "
            "metrics.jsonl (of all of them while fewer are logged)")


def checkpoint_stamp(run_dir: Path) -> dict | None:
    """The checkpoint ``gssl_fast.evaluate`` reads in ``run_dir`` (its newest), as a
    name, a time and a size that change when a newer one is written; None without one."""
    from gssl_fast.run.stages import trained_checkpoint

    try:
        file = trained_checkpoint(run_dir).file
        st = file.stat()
    except (UserError, OSError):
        return None
    return {"checkpoint": file.name, "mtime_ns": st.st_mtime_ns, "bytes": st.st_size}


def evaluated(run_dir: Path, evaluate: tuple[str, ...]) -> dict[str, float] | None:
    """What ``python -m gssl_fast.evaluate run_dir <evaluate>`` printed (``{name: value}``)
    on the row's newest checkpoint, kept in ``run_dir/evaluate.json``; None when it has
    not run on that checkpoint."""
    try:
        entry = json.loads((run_dir / EVALUATED).read_text())[shlex.join(evaluate)]
        values = entry["values"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return values if entry.get("on") == checkpoint_stamp(run_dir) else None


def keep_evaluation(run_dir: Path, evaluate: tuple[str, ...], on: dict | None, printed: str) -> dict[str, float]:
    """Keeps the ``name value`` lines ``gssl_fast.evaluate`` printed on the checkpoint
    ``on`` (:func:`checkpoint_stamp`) in ``run_dir/evaluate.json``, beside those of other
    option lists; returns them."""
    values = {}
    for line in printed.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[A-Za-z_][\w]*", parts[0]):
            with contextlib.suppress(ValueError):
                values[parts[0]] = float(parts[1])
    try:
        kept = json.loads((run_dir / EVALUATED).read_text())
    except (OSError, ValueError):
        kept = {}
    kept = kept if isinstance(kept, dict) else {}
    kept[shlex.join(evaluate)] = {"on": on, "values": values}
    write_text_atomic(run_dir / EVALUATED, json.dumps(kept, indent=1) + "\n")
    return values


def evaluation_command(table: Table, row: Row, out: Path) -> list[str]:
    """The one ``gssl_fast.evaluate`` call of ``row`` (its final checkpoint, the whole split)."""
    return [sys.executable, "-m", "gssl_fast.evaluate", str(out / row.name), *table.evaluate]


def needs_evaluation(table: Table, row: Row, out: Path) -> bool:
    """Whether ``row`` has trained and its evaluation is missing or of an older checkpoint."""
    return (bool(table.evaluate) and not row.cited and (out / row.name / FINISHED).exists()
            and evaluated(out / row.name, table.evaluate) is None)


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
    """``out/table.md`` and ``out/table.csv``: per row and metric, the paper's number,
    the row's by the metric's protocol (``Metric.kinds``: best and final, final, the
    median of the last k, or evaluate), the gap (the first of them - paper), and the
    overrides the row ran with; ``table.md`` says under the table which protocol made
    each column."""
    header = ["row"] + [f"{label} {c}" for m, label in zip(table.metrics, labels(table.metrics))
                        for c in ("paper", *m.kinds, "gap")] + ["overrides"]
    lines, md_sets = [], []
    for row in table.rows:
        cells = [row.name + (" (cited)" if row.cited else "")]
        for metric, paper in zip(table.metrics, row.paper):
            values = (None,) * len(metric.kinds) if row.cited else results(out / row.name, metric, table.evaluate)
            gap = values[0] - paper if values[0] is not None and paper is not None else None
            cells += [_fmt(paper), *map(_fmt, values), _fmt(gap)]
        items = [] if row.cited else ran_with(out / row.name)
        lines.append([*cells, shlex.join(items)])
        md_sets.append([*cells, " ".join(f"`{item}`".replace("|", "\\|") for item in items)])
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *lines])
    write_text_atomic(out / "table.csv", text.getvalue())  # whole or not at all: rows end at any time
    md = [*title_lines(table, out), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in md_sets]
    md += ["", "How each column was made (gap: the number less the paper's):", ""]
    md += [f"- {protocol(m, table.evaluate, label)}" for m, label in zip(table.metrics, labels(table.metrics))]
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
    side, then the evaluation of each row that has trained and needs one (a row trained
    earlier too); returns the rows that ran or were evaluated, and those that failed."""
    from gssl_fast.run.folder import trained_by

    todo, failed, trained = [], [], []
    for row in table.rows:
        if args.rows and row.name not in args.rows:
            continue
        paper = " ".join(f"{m.field} {_fmt(p) or '-'}" for m, p in zip(table.metrics, row.paper))
        if row.cited:
            print(f"{row.name}  paper {paper}  cited, not run", flush=True)
            continue
        if args.dry_run:
            cmd = command(table, row, out / row.name, args.set, args.launch)
            print(f"{row.name}  paper {paper}  {shlex.join(cmd)}", flush=True)
            if table.evaluate:
                print(f"{row.name}  then {shlex.join(evaluation_command(table, row, out))}", flush=True)
            continue
        if (out / row.name / FINISHED).exists():
            print(f"{row.name}: finished, skipped", flush=True)
            trained.append(row)
            continue
        holder = trained_by(out / row.name)
        if holder:  # a job of an earlier ladder still trains it
            print(f"{row.name}: being trained ({holder}), skipped; rerun the ladder once it ends", flush=True)
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

    def evaluation_ended(row: Row, values: dict | None, status: int | None) -> None:
        if values is None:
            failed.append(Failure(row.name, None))
            print(f"{row.name}: its evaluation failed ({'its job died' if status is None else f'exit status {status}'}"
                  "); rerun the ladder to evaluate it", file=sys.stderr, flush=True)
        else:
            missing = [m.field for m in table.metrics if m.evaluate and m.field not in values]
            if missing:
                print(f"{row.name}: python -m gssl_fast.evaluate printed no {', '.join(missing)}", file=sys.stderr,
                      flush=True)
        write_table(table, out)

    if args.dry_run:
        return [], []
    # Rows trained before this start whose evaluation is missing or older than their checkpoint go first.
    stale = [row for row in trained if needs_evaluation(table, row, out)]
    if (todo or stale) and (args.parallel > 1 or args.slurm is not None):
        runner = _runner(table, out, args)
        ladder_jobs.side_by_side(todo, runner, lambda row, extra: command(
            table, row, out / row.name, [*extra, *args.set], args.launch), ended)
        evaluate_side_by_side(table, [*stale, *(row for row in todo if needs_evaluation(table, row, out))], out,
                              runner, evaluation_ended)
    else:
        for row in stale:
            evaluation_ended(row, *evaluate_here(table, row, out))
        for row in todo:
            ended(row, *run_row(table, row, out, args))
            if needs_evaluation(table, row, out):
                evaluation_ended(row, *evaluate_here(table, row, out))
    write_table(table, out)
    print(f"table: {out / 'table.md'}", flush=True)
    return list(dict.fromkeys(row.name for row in (*todo, *stale))), failed


def evaluate_here(table: Table, row: Row, out: Path) -> tuple[dict | None, int]:
    """Runs ``row``'s evaluation as a process of this machine, its progress passed on as
    it comes; ``(what it printed, kept in evaluate.json, or None when it failed; its exit
    status)``."""
    cmd, on = evaluation_command(table, row, out), checkpoint_stamp(out / row.name)
    print(f"{row.name}: {shlex.join(cmd)}", flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, errors="replace")
    sys.stdout.write(done.stdout)
    sys.stdout.flush()
    if done.returncode != 0:
        return None, done.returncode
    return keep_evaluation(out / row.name, table.evaluate, on, done.stdout), 0


def evaluate_side_by_side(table: Table, rows: list[Row], out: Path, runner, ended) -> None:
    """The evaluations of ``rows`` through ``runner`` as the rows ran (a GPU each, or a
    job each), each one's output read back from the row's log; ``ended(row, values,
    status)`` as each ends."""
    started = {}

    def command_of(row: Row, _overrides) -> list[str]:
        started[row.name] = checkpoint_stamp(out / row.name)
        return evaluation_command(table, row, out)

    def evaluation_ended(row: Row, status: int | None, _message: str | None) -> None:
        printed = None
        if status == 0:
            printed = ladder_jobs.output_of(out / row.name / ladder_jobs.LOG, evaluation_command(table, row, out))
        values = None if printed is None else keep_evaluation(out / row.name, table.evaluate, started[row.name],
                                                              printed)
        ended(row, values, status)

    ladder_jobs.side_by_side(rows, runner, command_of, evaluation_ended)


if __name__ == "__main__":
    sys.exit(main())
