"""Methods run as stages in one run folder (G-SimCLR: autoencoder, cluster, pretrain,
linear, finetune).

Each stage is a method of its own (``Method.stages()``), trained by the ordinary loop in
``<run>/stages/<name>/`` (its checkpoints) or, for a stage that only computes
(``trains = False``), run once. Every stage logs into the run's metrics.jsonl with a
``stage`` field. A finished stage leaves ``<run>/stages/<name>/done.json`` and is skipped
by later runs; an interrupted one resumes from its newest checkpoint with
``--resume auto``; ``--stage NAME`` runs one stage (the stages before it must be done).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gssl_fast import checkpoint
from gssl_fast.errors import UserError
from gssl_fast.faults import crash_point
from pipelines.atomic import write_text_atomic

STAGES_DIR = "stages"
DONE = "done.json"


def stage_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / STAGES_DIR / name


def run_folder_of(folder: Path, stage: str) -> Path:
    """The run folder of a training folder: itself, or the run above a stage's folder."""
    return Path(folder).parent.parent if stage else Path(folder)


def is_done(run_dir: Path, name: str) -> bool:
    return (stage_dir(run_dir, name) / DONE).is_file()


def mark_done(run_dir: Path, name: str, row: dict | None = None) -> None:
    """Writes the stage's done marker atomically (its summary row inside)."""
    write_text_atomic(stage_dir(run_dir, name) / DONE, json.dumps({"stage": name, "finished": time.time(), **(row or {})}))


def run_stages(recipe, method, run_dir: Path, run: dict, *, resume: str | None, only: str | None, train) -> None:
    """Every stage of ``method`` in order (or ``only``): skip the done ones, resume the
    interrupted one, run the rest. ``run``: the loop's accelerator, threads and data;
    ``train(recipe, method, folder, start_from, stage=..., **run)``: the loop's training run."""
    from accelerate.utils import set_seed

    from gssl_fast.metrics import MetricsLog
    from pipelines.sampling import derive_seed

    accelerator = run["accelerator"]
    stages = method.stages()
    names = [name for name, _ in stages]
    if only is not None and only not in names:
        raise UserError(f"--stage {only}: method {recipe.method.name!r} has the stages {', '.join(names)}")
    for i, (name, make) in enumerate(stages):
        if only is not None and name != only:
            continue
        if is_done(run_dir, name) and only is None:
            if accelerator.is_main_process:
                print(f"stage {name}: done, skipped", flush=True)
            continue
        missing = [n for n in names[:i] if not is_done(run_dir, n)]
        if missing:
            raise UserError(f"stage {name} needs the stages before it; not done yet: {', '.join(missing)} "
                            f"(run without --stage, or --stage {missing[0]} first)")
        folder = stage_dir(run_dir, name)
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        # Each stage starts from a random state of its own: its weights do not depend on
        # what the stages before it drew in this process (or whether they ran in it).
        set_seed(derive_seed(recipe.train.seed, "stage", name) % (1 << 31))
        stage = make()
        if stage.trains:
            start = checkpoint.resolve_resume("auto" if resume or only else None, folder)
            train(stage.stage_sections(recipe), stage, folder, start, stage=name, **run)
            stage.finish(accelerator)
            row = {}
        else:
            row = {"stage": name, "epoch": 0, **stage.run(accelerator)}
            if accelerator.is_main_process:
                print(f"stage {name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("stage", "epoch")),
                      flush=True)
                log = MetricsLog(Path(run_dir) / "metrics.jsonl", stage=name)
                log.truncate_after(-1)
                log.append(row)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            mark_done(run_dir, name, {k: v for k, v in row.items() if isinstance(v, (int, float, str))})
        accelerator.wait_for_everyone()
        crash_point("stage")
