"""PGD on pixels: the eps-ball and [0, 1] hold, the attack raises the loss of a trained
model, robust accuracy is at most clean accuracy, and evaluation is deterministic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from gssl_fast.model.attacks import ATTACKS, Attack, get_attack, pgd, robust_accuracy
from gssl_fast.model.metrics import evaluate
from pipelines.errors import UserError
from pipelines.torch import make_loader


class Linear(nn.Module):
    """A pixel-space linear classifier with the task's output dict."""

    def __init__(self, side=8, classes=3):
        super().__init__()
        self.fc = nn.Linear(3 * side * side, classes)

    def forward(self, x):
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return {"logits": self.fc(x.flatten(1))}


def trained_model(images, labels, steps=200):
    torch.manual_seed(0)
    model = Linear(images.shape[-1], int(labels.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(images)["logits"], labels).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def separable_data(n=96, side=8, seed=0):
    """Class k lights channel k: easy to learn, and eps-close to the other classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.rand(n, 3, side, side, generator=g) * 0.2
    images[torch.arange(n), labels] += 0.06
    return images.clamp(0, 1), labels


@pytest.mark.parametrize("eps, step, steps", [(8 / 255, 2 / 255, 10), (0.05, 0.3 / 255, 3), (0.5, 0.1, 5)])
def test_adversarial_images_stay_in_the_ball_and_in_range(eps, step, steps):
    images, labels = separable_data()
    model = trained_model(images, labels, steps=20)
    adv = pgd(lambda x: F.cross_entropy(model(x)["logits"], labels, reduction="sum"), images,
              eps=eps, step=step, steps=steps)
    assert adv.dtype == torch.float32 and not adv.requires_grad
    assert (adv - images).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())


def test_uint8_input_is_attacked_in_pixel_units():
    images = (torch.rand(4, 3, 8, 8) * 255).to(torch.uint8)
    model = Linear()
    adv = pgd(lambda x: model(x)["logits"].sum(), images, eps=8 / 255, step=2 / 255, steps=2)
    assert (adv - images.float() / 255).abs().max() <= 8 / 255 + 1e-6


def test_attack_raises_the_loss_and_lowers_accuracy():
    images, labels = separable_data()
    model = trained_model(images, labels)

    def loss(x):
        return F.cross_entropy(model(x)["logits"], labels, reduction="sum")

    adv = pgd(loss, images, eps=8 / 255, step=2 / 255, steps=10)
    assert loss(adv) > 2 * loss(images)
    clean_acc = (model(images)["logits"].argmax(1) == labels).float().mean()
    robust_acc = (model(adv)["logits"].argmax(1) == labels).float().mean()
    assert clean_acc > 0.95 and robust_acc < clean_acc


def test_robust_accuracy_is_deterministic_and_below_clean():
    images, labels = separable_data(n=64)
    model = trained_model(images, labels)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    loader = make_loader((pixels, labels.numpy()), batch_size=16, tasks=(), augment=False, normalize=False,
                         shuffle=False, device="cpu")
    acc = Accelerator(cpu=True)
    clean = evaluate(model, loader, accelerator=acc, num_classes=3)["val_acc1"]
    first = robust_accuracy(model, loader, get_attack("pgd20"), accelerator=acc, max_images=40, seed=3)
    again = robust_accuracy(model, loader, get_attack("pgd20"), accelerator=acc, max_images=40, seed=3)
    assert first == again and first["images"] == 40
    assert first["acc1"] <= clean
    weak = robust_accuracy(model, loader, Attack(steps=1, step_255=0.1, eps_255=0.1), accelerator=acc, seed=3)
    assert weak["images"] == 64 and first["acc1"] <= weak["acc1"]


def test_the_papers_attacks():
    assert ATTACKS["pgd20"] == Attack(steps=20, step_255=2.0, eps_255=8.0)
    assert ATTACKS["pgd100"] == Attack(steps=100, step_255=0.3, eps_255=8.0)
    with pytest.raises(UserError, match="pgd100, pgd20"):
        get_attack("fgsm")
