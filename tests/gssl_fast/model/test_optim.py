import math

import pytest
import torch

from gssl_fast.config import OptimConfig
from gssl_fast.model.optim import build_optimizer, build_scheduler, cosine_restarts, lr_factor


def test_step_schedule_with_warmup_matches_ldam_drw():
    cfg = OptimConfig(schedule="step", warmup_epochs=5, milestones=(160, 180), milestone_factors=(0.01, 0.0001))
    assert lr_factor(cfg, 2.5, 200) == pytest.approx(0.5)
    assert lr_factor(cfg, 5.0, 200) == 1.0
    assert lr_factor(cfg, 159.99, 200) == 1.0
    assert lr_factor(cfg, 160.0, 200) == pytest.approx(0.01)
    assert lr_factor(cfg, 185.0, 200) == pytest.approx(0.0001)


def test_a_warm_up_by_epoch_holds_each_epochs_lr_as_ldam_drw_does():
    """The authors' adjust_learning_rate: lr x (e + 1) / 5 through epoch e < 5, once per epoch."""
    cfg = OptimConfig(schedule="step", warmup_epochs=5, warmup_by="epoch", milestones=(160, 180),
                      milestone_factors=(0.01, 0.0001))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = build_scheduler(opt, cfg, steps_per_epoch=4, epochs=200)
    lrs = []
    for _ in range(4 * 7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.1 * min(e + 1, 5) / 5 for e in range(7) for _ in range(4)]
    assert lrs == pytest.approx(want)
    by_step = OptimConfig(schedule="step", warmup_epochs=5)
    assert lr_factor(by_step, 0.25, 200) == pytest.approx(0.05)  # the default grows every step
    assert lr_factor(cfg, 0.25, 200) == pytest.approx(0.2)


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


def tf_cosine_decay_restarts(step, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0):
    """TF's ``CosineDecayRestarts.__call__`` (keras/optimizers/schedules), transcribed
    (factor of ``initial_learning_rate``, float64)."""
    completed_fraction = step / first_decay_steps
    if t_mul == 1.0:
        i_restart = math.floor(completed_fraction)
        completed_fraction -= i_restart
    else:
        i_restart = math.floor(math.log(1.0 - completed_fraction * (1.0 - t_mul)) / math.log(t_mul))
        sum_r = (1.0 - t_mul**i_restart) / (1.0 - t_mul)
        completed_fraction = (completed_fraction - sum_r) / t_mul**i_restart
    cosine_decayed = 0.5 * m_mul**i_restart * (1.0 + math.cos(math.pi * completed_fraction))
    return (1 - alpha) * cosine_decayed + alpha


def test_cosine_restarts_is_tf_cosine_decay_restarts_per_optimizer_step():
    """The notebooks' ``CosineDecayRestarts(0.1, 1000)`` with TF's defaults: restarts at
    steps 1000, 3000, 7000; the scheduler's step ``s`` is TF's ``optimizer.iterations``."""
    cfg = OptimConfig(lr=0.1, momentum=0.0, schedule="cosine_restarts", first_decay_steps=1000)
    assert (cfg.t_mul, cfg.m_mul, cfg.alpha) == (2.0, 1.0, 0.0)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=781, epochs=15)  # 50000 / 64 steps an epoch
    lrs = []
    for _ in range(7001):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    pinned = {0: 1.0, 999: 0.5 * (1 + math.cos(math.pi * 0.999)), 1000: 1.0,
              2999: 0.5 * (1 + math.cos(math.pi * 0.9995)), 3000: 1.0, 7000: 1.0}
    for s, factor in pinned.items():
        assert lrs[s] == pytest.approx(0.1 * factor, abs=1e-12), s
        assert lrs[s] == pytest.approx(0.1 * tf_cosine_decay_restarts(s, 1000), abs=1e-12), s
    assert lrs[999] < 1e-6 and lrs[2000] == pytest.approx(0.05)  # the middle of the second period (2000 steps)
    for s in (1, 500, 1500, 2500, 5000, 6999):
        assert lrs[s] == pytest.approx(0.1 * tf_cosine_decay_restarts(s, 1000), abs=1e-12), s
    other = dict(first_decay_steps=10, t_mul=1.5, m_mul=0.5, alpha=0.1)
    for s in range(0, 200, 7):
        assert cosine_restarts(s, **other) == pytest.approx(tf_cosine_decay_restarts(s, **other), abs=1e-9), s
    for s in range(0, 50):
        assert cosine_restarts(s, 10, t_mul=1.0) == pytest.approx(tf_cosine_decay_restarts(s, 10, t_mul=1.0)), s


def test_cosine_restarts_keys_are_checked():
    from gssl_fast.config_checks import check_optim
    from pipelines.errors import UserError

    for bad, key in ((dict(t_mul=0.5), "optim.t_mul"), (dict(first_decay_steps=0), "optim.first_decay_steps"),
                     (dict(alpha=1.5), "optim.alpha"), (dict(m_mul=0.0), "optim.m_mul")):
        with pytest.raises(UserError, match=key):
            check_optim(OptimConfig(schedule="cosine_restarts", **bad), "test")
    with pytest.raises(ValueError, match="counts optimizer steps"):
        lr_factor(OptimConfig(schedule="cosine_restarts"), 1.0, 10)
