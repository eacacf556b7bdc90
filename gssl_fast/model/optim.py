"""Optimizer and learning-rate schedule (docs/method.md section 3), stepped per optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from gssl_fast.sections import OptimConfig
from pipelines.errors import unknown_name


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum, optional Nesterov and weight decay; or Adam (``optim.name = "adam"``).

    params: a module, or parameters / groups. A module's trainable parameters all decay
    (as the papers' code does), or with ``decay_bias_and_norm = false`` all but biases
    and normalization weights (every 1-D parameter: timm's ``param_groups_weight_decay``,
    as the FixMatch ports do).
    """
    if cfg.name not in OPTIMIZERS:
        raise unknown_name("optim.name", cfg.name, OPTIMIZERS)
    if isinstance(params, torch.nn.Module):
        if cfg.decay_bias_and_norm:
            params = [p for p in params.parameters() if p.requires_grad]
        else:
            from timm.optim import param_groups_weight_decay

            params = param_groups_weight_decay(params, cfg.weight_decay)
    return OPTIMIZERS[cfg.name](params, cfg)


def _sgd(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


def _adam(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    # momentum / nesterov do not apply; weight decay is Adam's L2 term
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


OPTIMIZERS = {"sgd": _sgd, "adam": _adam}


def _cosine(cfg: OptimConfig, epoch: float, epochs: int) -> float:
    span = max(epochs - cfg.warmup_epochs, 1e-8)
    progress = min(max((epoch - cfg.warmup_epochs) / span, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _step(cfg: OptimConfig, epoch: float, epochs: int) -> float:
    factor = 1.0
    for milestone, f in zip(cfg.milestones, cfg.milestone_factors):
        if epoch >= milestone:
            factor = f
    return factor


def _constant(cfg: OptimConfig, epoch: float, epochs: int) -> float:
    return 1.0


def _fixmatch_cosine(cfg: OptimConfig, epoch: float, epochs: int) -> float:
    # FixMatch: cos(7 pi k / 16 K) over the K steps: from 1 down to cos(7 pi / 16) ~ 0.2.
    span = max(epochs - cfg.warmup_epochs, 1e-8)
    progress = min(max((epoch - cfg.warmup_epochs) / span, 0.0), 1.0)
    return math.cos(7.0 * math.pi * progress / 16.0)


def cosine_restarts(step: int, first_decay_steps: int, t_mul: float = 2.0, m_mul: float = 1.0,
                    alpha: float = 0.0) -> float:
    """TF's ``CosineDecayRestarts`` factor at optimizer step ``step`` (0-based, TF's
    ``optimizer.iterations``): Loshchilov & Hutter's SGDR, "within the i-th run, we decay
    the learning rate with a cosine annealing for each batch". The first period lasts
    ``first_decay_steps`` steps, each next one ``t_mul`` times longer (restarts at 1000,
    3000, 7000, ... for 1000 and 2); restart ``i`` peaks at ``m_mul ** i``; the factor is
    ``alpha + (1 - alpha) * m_mul**i * (1 + cos(pi * t)) / 2`` with ``t`` in [0, 1) the
    share of the period done. Periods are found by summing them (exact for whole steps),
    where TF takes a float logarithm."""
    if t_mul == 1.0:
        i, done, period = step // first_decay_steps, step % first_decay_steps, float(first_decay_steps)
    else:
        i, start, period = 0, 0.0, float(first_decay_steps)
        while step >= start + period:
            start, period, i = start + period, period * t_mul, i + 1
        done = step - start
    cosine = 0.5 * m_mul**i * (1.0 + math.cos(math.pi * done / period))
    return (1.0 - alpha) * cosine + alpha


def _cosine_restarts(cfg: OptimConfig, epoch: float, epochs: int) -> float:
    raise ValueError("optim.schedule = \"cosine_restarts\" counts optimizer steps: use build_scheduler or "
                     "cosine_restarts(step, ...)")


SCHEDULES = {"cosine": _cosine, "step": _step, "constant": _constant, "fixmatch_cosine": _fixmatch_cosine,
             "cosine_restarts": _cosine_restarts}


# optim.warmup_by -> the warm-up's multiplier at fractional ``epoch`` (0-based) of a warm-up
# of ``length`` epochs: growing with every step, or held through each epoch at (e + 1) / length
# (the LDAM-DRW code's adjust_learning_rate, once per epoch).
WARMUP_BY = {"step": lambda epoch, length: epoch / length,
             "epoch": lambda epoch, length: min(math.ceil(epoch), length) / length}


def lr_factor(cfg: OptimConfig, epoch: float, epochs: int, *, step: int | None = None) -> float:
    """Multiplier of ``cfg.lr`` at fractional ``epoch`` (0-based) of an ``epochs`` run.

    Linear warm-up over ``warmup_epochs`` (from one step's worth, never 0; or per epoch,
    ``optim.warmup_by``), then the schedule. ``step`` multiplies the base lr by the factor of the last milestone passed
    (LDAM-DRW: x0.01 from epoch 160, x0.0001 from 180). ``cosine_restarts`` reads the
    optimizer ``step`` (0-based) instead of the epoch (:func:`cosine_restarts`).
    """
    if cfg.schedule not in SCHEDULES:
        raise unknown_name("optim.schedule", cfg.schedule, SCHEDULES)
    if cfg.schedule == "cosine_restarts" and step is not None:
        factor = cosine_restarts(step, cfg.first_decay_steps, cfg.t_mul, cfg.m_mul, cfg.alpha)
    else:
        factor = SCHEDULES[cfg.schedule](cfg, epoch, epochs)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        factor *= WARMUP_BY[cfg.warmup_by](epoch, cfg.warmup_epochs)
    return factor


def build_scheduler(optimizer, cfg: OptimConfig, *, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """A ``LambdaLR`` to step once per optimizer step; step ``s`` sits at epoch
    ``(s + 1) / steps_per_epoch`` so that warm-up never starts at lr 0."""
    steps = max(steps_per_epoch, 1)
    if cfg.schedule == "cosine_restarts":  # per optimizer step, as TF's schedule (step 0: the first update)
        return LambdaLR(optimizer, lambda s: lr_factor(cfg, (s + 1) / steps, epochs, step=s))
    return LambdaLR(optimizer, lambda s: lr_factor(cfg, (s + 1) / steps, epochs))
