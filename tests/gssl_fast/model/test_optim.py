import math

import pytest
import torch

from gssl_fast.config import OptimConfig
from gssl_fast.model.optim import build_optimizer, build_scheduler, lr_factor


def test_step_schedule_with_warmup_matches_ldam_drw():
    cfg = OptimConfig(schedule="step", warmup_epochs=5, milestones=(160, 180), milestone_factors=(0.01, 0.0001))
    assert lr_factor(cfg, 2.5, 200) == pytest.approx(0.5)
    assert lr_factor(cfg, 5.0, 200) == 1.0
    assert lr_factor(cfg, 159.99, 200) == 1.0
    assert lr_factor(cfg, 160.0, 200) == pytest.approx(0.01)
    assert lr_factor(cfg, 185.0, 200) == pytest.approx(0.0001)


def test_cosine_after_warmup():
    cfg = OptimConfig(schedule="cosine", warmup_epochs=0)
    assert lr_factor(cfg, 0.0, 100) == 1.0
    assert lr_factor(cfg, 50.0, 100) == pytest.approx(0.5)
    assert lr_factor(cfg, 100.0, 100) == pytest.approx(0.0, abs=1e-12)
    warm = OptimConfig(schedule="cosine", warmup_epochs=10)
    assert lr_factor(warm, 55.0, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_steps_per_optimizer_step_and_never_starts_at_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = OptimConfig(lr=0.1, schedule="constant", warmup_epochs=1, nesterov=True)
    opt = build_optimizer([p], cfg)
    assert opt.defaults["nesterov"] and opt.defaults["weight_decay"] == cfg.weight_decay
    sched = build_scheduler(opt, cfg, steps_per_epoch=4, epochs=3)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_fixmatch_cosine_is_cos_7_pi_k_over_16_K():
    cfg = OptimConfig(lr=0.03, schedule="fixmatch_cosine")
    for k, total in ((0, 100), (50, 100), (100, 100), (37, 1 << 20)):
        assert lr_factor(cfg, k, total) == pytest.approx(math.cos(7 * math.pi * k / (16 * total)))
    assert lr_factor(cfg, 100, 100) == pytest.approx(0.1951, abs=1e-4)


def test_weight_decay_can_spare_biases_and_norm_weights():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    every = build_optimizer(model, OptimConfig(weight_decay=5e-4))
    assert [g["weight_decay"] for g in every.param_groups] == [5e-4]
    spared = build_optimizer(model, OptimConfig(weight_decay=5e-4, decay_bias_and_norm=False))
    decay = {id(p): g["weight_decay"] for g in spared.param_groups for p in g["params"]}
    assert decay[id(model[0].weight)] == decay[id(model[2].weight)] == 5e-4
    assert decay[id(model[0].bias)] == decay[id(model[1].weight)] == decay[id(model[1].bias)] == 0.0
    assert len(decay) == len(list(model.parameters()))
