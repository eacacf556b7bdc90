"""Projected gradient descent (Madry et al. 2018) on pixels in [0, 1] (docs/method.md section 3).

    x_0 = clip(x + U(-eps, eps));   x_{t+1} = clip_{eps-ball(x) and [0, 1]}(x_t + step * sign(grad))

``ATTACKS`` names the evaluation attacks of Table 2; ``pgd`` is the one implementation
behind them and behind adversarial training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from pipelines.errors import unknown_name


@dataclass(frozen=True)
class Attack:
    """An L-inf PGD attack; sizes in 0-255 pixel units (``eps_255 = 8`` is 8/255)."""

    steps: int
    step_255: float
    eps_255: float = 8.0


# Evaluation attacks of the long paper's Table 2.
ATTACKS: dict[str, Attack] = {
    "pgd20": Attack(steps=20, step_255=2.0),
    "pgd100": Attack(steps=100, step_255=0.3),
}


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS)
    return ATTACKS[name]


def pgd(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial images that raise ``loss_fn``: ``[B, 3, H, W]`` float32 in [0, 1], detached.

    images: ``[B, 3, H, W]`` float pixels in [0, 1] (or uint8, scaled by 1/255).
    loss_fn: pixels -> scalar loss to maximize (summed over the batch, so that each
    image's gradient is its own). eps, step: in [0, 1] pixel units. The random start
    is drawn from ``generator`` (CPU) when given, else from torch's default stream on
    the images' device. Model parameters receive no gradient.
    """
    clean = (images.float() / 255.0 if images.dtype == torch.uint8 else images.float()).detach()
    low, high = (clean - eps).clamp_(min=0.0), (clean + eps).clamp_(max=1.0)
    x = clean
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, device="cpu" if generator is not None else clean.device)
        x = torch.max(torch.min(clean + (2 * noise.to(clean.device) - 1) * eps, high), low)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(x), x)
        x = torch.max(torch.min(x.detach() + step * grad.sign(), high), low)
    return x.detach()


@torch.no_grad()
def robust_accuracy(model, loader, attack: Attack, *, accelerator, max_images: int = 0, seed: int = 0) -> dict:
    """Top-1 accuracy in percent on adversarial images of the first ``max_images``
    (0 = all) validation images of ``loader`` (this process's shard), with the class
    loss alone and ``model`` in eval mode. Returns ``{"acc1", "images"}`` summed over
    processes. Deterministic for a seed: the random starts come from a CPU generator.
    """
    from pipelines.sampling import generator

    model.eval()
    gen = generator(seed, "attack", accelerator.process_index)
    limit = -(-max_images // accelerator.num_processes) if max_images else 0
    eps, step = attack.eps_255 / 255.0, attack.step_255 / 255.0
    correct = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    seen = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    for batch in loader:
        images, labels = batch["images"], batch["labels"]
        if limit:
            images, labels = images[: limit - int(seen)], labels[: limit - int(seen)]
        with accelerator.autocast():
            def loss(x, y=labels):
                return F.cross_entropy(model(x)["logits"].float(), y, reduction="sum")

            adv = pgd(loss, images, eps=eps, step=step, steps=attack.steps, generator=gen)
            logits = model(adv)["logits"]
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
        if limit and int(seen) >= limit:
            break
    correct, seen = accelerator.reduce(torch.stack([correct, seen]), reduction="sum")
    return {"acc1": 100.0 * float(correct) / max(int(seen), 1), "images": int(seen)}
