"""Methods run as stages in one run folder (G-SimCLR: autoencoder, cluster, pretrain,
linear, finetune).

Each stage is a method of its own (``Method.stages()``), trained by the ordinary loop in
``<run>/stages/<name>/`` (its checkpoints) or, for a stage that only computes
(``trains = False``), run once. Every stage logs into the run's metrics.jsonl with a
``stage`` field. A finished stage leaves ``<run>/stages/<name>/done.json`` and is skipped
by later runs; an interrupted one resumes from its newest checkpoint with
``--resume auto``; ``--stage NAME`` reruns one stage from its start (the stages before
it must be done) and marks the ones after it as to be rerun (``--stage NAME --resume
auto`` continues it instead). Each stage's folder keeps the recipe that trained it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gssl_fast import checkpoint
from pipelines.errors import UserError
from gssl_fast.faults import crash_point
from gssl_fast.checkpoint import stage_dir
from gssl_fast.run.folder import CONFIG, METRICS, record_recipe
from pipelines.atomic import write_text_atomic

DONE = "done.json"


@dataclass(frozen=True)
class Trained:
    """A checkpoint file and what trained it: ``run_dir``, the run folder; ``stage``,
    the stage whose model the file holds ("" for a run trained in one piece)."""

    file: Path
    run_dir: Path
    stage: str = ""

    def pick(self, method):
        """The method whose model the file holds: ``method`` itself, or its stage."""
        return dict(method.stages())[self.stage]() if self.stage else method


def trained_checkpoint(path: str | os.PathLike) -> Trained:
    """The checkpoint ``path`` names: the file itself, or the newest checkpoint of the
    run folder ``path``; for a run of a staged method (G-SimCLR) the newest of the stage
    whose model classifies (``Method.exported_stage``)."""
    path = Path(path)
    if path.is_file():
        folder = path.parent.parent  # <run>[/stages/<stage>]/checkpoints/<file>
        if folder.parent.name == checkpoint.STAGES_DIR:
            return Trained(path, folder.parent.parent, folder.name)
        return Trained(path, folder)
    found = checkpoint.list_checkpoints(path)
    if not found and (path / checkpoint.STAGES_DIR).is_dir():
        stage = exported_stage(path)
        found = checkpoint.list_checkpoints(stage_dir(path, stage))
        if not found:
            raise UserError(f"{path} is a staged run whose {stage} stage has no checkpoint yet; finish it with "
                            f"python -m gssl_fast.train {path / CONFIG} --out {path} --resume auto")
        return Trained(found[-1], path, stage)
    if not found:
        raise UserError(f"{path} is neither a checkpoint file nor a run folder with checkpoints "
                        f"({path / checkpoint.CHECKPOINT_DIR} holds none)")
    return Trained(found[-1], path)


def exported_stage(run_dir: Path) -> str:
    """The stage of a staged run whose model ``load_model`` exports, from its recipe."""
    from gssl_fast.config import load_recipe
    from gssl_fast.methods import method_class

    return method_class(load_recipe(run_dir / CONFIG).method.name).exported_stage


def is_done(run_dir: Path, name: str) -> bool:
    return (stage_dir(run_dir, name) / DONE).is_file()


def mark_done(run_dir: Path, name: str, row: dict | None = None) -> None:
    """Writes the stage's done marker atomically (its summary row inside)."""
    write_text_atomic(stage_dir(run_dir, name) / DONE, json.dumps({"stage": name, "finished": time.time(), **(row or {})}))


def run_stages(recipe, method, run_dir: Path, machine, *, resume: str | None, only: str | None) -> None:
    """Every stage of ``method`` in order (or ``only``): skip the done ones, resume the
    interrupted one, run the rest, each trained as one run of the loop
    (``gssl_fast.run.loop``; ``machine``: its ``Machine``). ``only`` without ``resume``
    reruns that stage from its start and marks the stages after it as to be rerun. Each
    stage's folder keeps the recipe that trained it (config.toml)."""
    accelerator = machine.accelerator
    stages = method.stages()
    names = [name for name, _ in stages]
    check_stage(method, run_dir, only)
    rerun = only is not None and not resume
    record_recipe(recipe, run_dir, accelerator, note=f"rerunning stage {only}" if rerun else "resuming")
    if rerun:
        reset_stages(run_dir, names[names.index(only):], accelerator)
    for name, make in stages:
        if only is not None and name != only:
            continue
        if is_done(run_dir, name):
            if accelerator.is_main_process:
                print(f"stage {name}: done, skipped{changed_since(run_dir, name, recipe)}", flush=True)
            continue
        _run_stage(recipe, run_dir, name, make, machine)
    later = [n for n in names if not is_done(run_dir, n)]
    if only is not None and later and accelerator.is_main_process:
        print(f"stage {only}: done; still to run: {', '.join(later)} (continue the run with --resume auto)", flush=True)


def check_stage(method, run_dir: Path, only: str | None) -> None:
    """Refuses ``--stage only`` for a method without that stage, or before the stages
    ahead of it are done; writes nothing."""
    if only is None:
        return
    names = [name for name, _ in method.stages()]
    if not names:
        raise UserError(f"--stage {only}: method.name = {method.name!r} has no stages")
    if only not in names:
        raise UserError(f"--stage {only}: method {method.name!r} has the stages {', '.join(names)}")
    missing = [n for n in names[:names.index(only)] if not is_done(run_dir, n)]
    if missing:
        raise UserError(f"stage {only} needs the stages before it; not done yet: {', '.join(missing)} "
                        f"(continue the run with --resume auto, or --stage {missing[0]} first)")


def _run_stage(recipe, run_dir: Path, name: str, make, machine) -> None:
    """One stage, from its newest checkpoint if it has one; marks it done."""
    from accelerate.utils import set_seed

    from gssl_fast.run.loop import open_run, train_run
    from gssl_fast.run.log import MetricsLog
    from pipelines.sampling import derive_seed

    accelerator = machine.accelerator
    folder = stage_dir(run_dir, name)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    # Each stage starts from a random state of its own: its weights do not depend on
    # what the stages before it drew in this process (or whether they ran in it).
    set_seed(derive_seed(recipe.train.seed, "stage", name) % (1 << 31))
    stage = make()
    record_recipe(recipe, folder, accelerator, note=f"stage {name}: resuming")
    if stage.trains:
        log = MetricsLog(Path(run_dir) / METRICS, tags={"stage": name})
        run = open_run(stage.stage_sections(recipe), stage, machine, folder, log)
        train_run(run, checkpoint.resolve_resume("auto", folder))
        stage.finish(accelerator)
        row = {}
    else:
        data = machine.data  # the same loaders a training stage is offered, and the validation split's
        stage.attach_loaders(train_eval=lambda subset=None: data.plain_loader(recipe.train, "train", subset),
                             val=lambda: data.plain_loader(recipe.train))
        row = {"stage": name, "epoch": 0, **stage.run(accelerator)}
        if accelerator.is_main_process:
            print(f"stage {name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("stage", "epoch")),
                  flush=True)
            log = MetricsLog(Path(run_dir) / METRICS, tags={"stage": name})
            log.truncate_after(-1)
            log.append(row)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        mark_done(run_dir, name, {k: v for k, v in row.items() if isinstance(v, (int, float, str))})
    accelerator.wait_for_everyone()
    crash_point("stage")


def reset_stages(run_dir: Path, names: list[str], accelerator) -> None:
    """Makes ``names`` (a stage and the ones after it) run again from their start: their
    checkpoints, done markers, recorded recipes and metrics rows are removed."""
    import shutil

    from gssl_fast.run.log import MetricsLog

    if accelerator.is_main_process:
        for name in names:
            folder = stage_dir(run_dir, name)
            if folder.is_dir() and any(folder.iterdir()):
                print(f"stage {name}: to be rerun from its start", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            MetricsLog(Path(run_dir) / METRICS, tags={"stage": name}).truncate_after(-1)
    accelerator.wait_for_everyone()


def changed_since(run_dir: Path, name: str, recipe) -> str:
    """`` (trained with other settings: ...; rerun it with --stage NAME)`` when the
    recipe that trained stage ``name`` differs from ``recipe``, else ``""``."""
    from gssl_fast.config import recipe_changes

    path = stage_dir(run_dir, name) / CONFIG
    changed = recipe_changes(path, recipe) if path.is_file() else []
    return f" (trained with other settings: {'; '.join(changed)}; rerun it with --stage {name})" if changed else ""
