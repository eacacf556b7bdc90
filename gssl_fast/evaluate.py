"""``python -m gssl_fast.evaluate``: clean and robust accuracy of a finished run, its
calibration (before and after temperature scaling) and its out-of-distribution scores.

The accuracy over a loader itself is ``gssl_fast.model.metrics.evaluate``; the
calibration and OOD figures are ``gssl_fast.analysis.uncertainty``'s.
"""

from __future__ import annotations

import torch

from gssl_fast.model.metrics import evaluate

USAGE = """Evaluates a finished run on its whole validation split, one line per metric.

    python -m gssl_fast.evaluate RUN_DIR [--attack pgd20] [--attack pgd100] [--limit N]
                                         [--calibration] [--ood SOURCE [--ood SOURCE ...]]

RUN_DIR is a run folder (its newest checkpoint) or a checkpoint file; works on a run of
any method. Prints ``acc1 93.10``, ``acc5 99.80`` and ``<attack>_acc1 43.21`` lines;
--calibration adds ``ece``, ``nll``, ``brier``, their ``_calibrated`` values and the
``temperature`` fitted on the training images the run held out of training
(data.calibration_fraction; else on a share of those it trained on, as it says),
written to RUN_DIR/temperature.json and used by load_model(..., calibrated=True).
The validation images are read as the run read them: a streamed dataset from its files
or shards again, centre-cropped as in training. --ood SOURCE adds
``ood_<score>_auroc``, ``_aupr`` and ``_fpr95`` for the scores msp, energy, pretext and
msp_pretext (the last two need pretext heads). SOURCE: a dataset name with an optional
root (``cifar100``, ``cifar100:data/cifar-100-python``, ``shapes``) or an image folder.
The progress of each pass goes to the terminal (a bar) or stderr (a line per ~10%)."""


def parse_args(argv=None):
    import argparse

    from gssl_fast.model.attacks import ATTACKS

    p = argparse.ArgumentParser(prog="python -m gssl_fast.evaluate", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--attack", action="append", default=[], choices=sorted(ATTACKS),
                   help="robust accuracy under this attack (eps 8/255); repeatable")
    p.add_argument("--limit", type=int, default=0, help="attack only the first N validation images (0 = all)")
    p.add_argument("--batch-size", type=int, default=0, help="evaluation batch (default: train.eval_batch_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    p.add_argument("--calibration", action="store_true",
                   help="ECE, NLL and Brier score before and after temperature scaling")
    p.add_argument("--calibration-fraction", type=float, default=0.1, metavar="F",
                   help="for a run that trained on every training image (data.calibration_fraction = 0): the "
                        "share of each class of them the temperature is fitted on (default 0.1)")
    p.add_argument("--ood", action="append", default=[], metavar="SOURCE",
                   help="out-of-distribution scores against this source's validation images; repeatable")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import sys

    from pipelines.errors import UserError

    args = parse_args(argv)
    try:
        from gssl_fast.analysis.inference import load_for_evaluation

        loaded = load_for_evaluation(args.run)  # one load serves every pass
        uncertain = args.calibration or bool(args.ood)
        # The calibration and OOD pass over the validation images gives the accuracy too.
        result = evaluate_run(args.run, attacks=args.attack, limit=args.limit, batch_size=args.batch_size,
                              seed=args.seed, loaded=loaded, clean=not uncertain)
        if uncertain:
            from gssl_fast.analysis.evaluations import uncertainty_run

            more = uncertainty_run(args.run, calibration=args.calibration, fraction=args.calibration_fraction,
                                   sources=args.ood, batch_size=args.batch_size, loaded=loaded, accuracy=True)
            result = {"acc1": more.pop("acc1"), "acc5": more.pop("acc5"), **result, **more}
        for name, value in result.items():
            exact = any(k in name for k in ("nll", "brier", "temperature"))  # not percentages
            print(f"{name} {value:.4f}" if exact else f"{name} {value:.2f}", flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def evaluate_run(run, *, attacks=(), limit: int = 0, batch_size: int = 0, seed: int = 0,
                 loaded=None, clean: bool = True) -> dict[str, float]:
    """Clean top-1 / top-5 (unless not ``clean``) and robust top-1 (percent) of a run on
    its validation split, with the plain torch loader on the CPU or the first GPU, in one
    process. ``loaded``: what ``load_for_evaluation(run)`` gave, when the caller has it
    already."""
    from accelerate import Accelerator

    from gssl_fast.model.attacks import get_attack, robust_accuracy
    from gssl_fast.analysis.inference import load_for_evaluation
    from gssl_fast.run.progress import progressed

    if not (clean or attacks):
        return {}
    recipe, method, model, val = loaded or load_for_evaluation(run)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = model.to(accelerator.device)
    loader = val.loader(batch_size or recipe.train.eval_batch_size, accelerator.device)
    result = {}
    if clean:
        report = evaluate(model, progressed(loader, "clean"), accelerator=accelerator,
                          num_classes=method.ctx.num_classes)
        result.update(acc1=report["val_acc1"], acc5=report["val_acc5"])
    attacked = min(len(loader), -(-limit // loader.batch_size)) if limit else len(loader)
    for name in attacks:
        robust = robust_accuracy(model, progressed(loader, name, total=attacked), get_attack(name),
                                 accelerator=accelerator, max_images=limit, seed=seed)
        result[f"{name}_acc1"] = robust["acc1"]
    return result


if __name__ == "__main__":
    raise SystemExit(main())
