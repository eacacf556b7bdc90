"""CUDA-only checks (run by `make gpu-check`; skipped without a GPU): a bf16 training
step of every method, and the torch loader's dataset resident on the GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")

CASES = {
    "supervised": ('[method]\nname = "supervised"\n', ()),
    "g-ssl": ("", ("rotation", "flip", "perm")),
    "mixup": ('[method]\nname = "supervised"\nmixup_alpha = 1.0\n', ()),
    "adversarial g-ssl": ('[method]\nname = "adversarial"\nsteps = 3\n', ("rotation", "flip", "perm")),
}


@pytest.mark.parametrize("case", CASES)
def test_bf16_step_of_each_method(tiny_recipe, case):
    from accelerate import Accelerator

    from gssl_fast.config import load_recipe
    from gssl_fast.methods import MethodContext, build_method
    from pipelines import make_loader
    from pipelines.datasets import make_shapes

    text, tasks = CASES[case]
    recipe = load_recipe(tiny_recipe(text))
    recipe = dataclasses.replace(recipe, pretext=dataclasses.replace(recipe.pretext, tasks=tasks))
    accelerator = Accelerator(mixed_precision="bf16")
    method = build_method(recipe.method, MethodContext.of(recipe, [4] * 10, (0.5,) * 3, (0.25,) * 3))
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.05)
    model, optimizer = accelerator.prepare(method.model, optimizer)
    batch = next(iter(make_loader(make_shapes(64, image_size=16), batch_size=32, tasks=tasks, normalize=False,
                                  device=accelerator.device)))
    assert batch["images"].is_cuda
    out = method.training_step(model, {"train": batch}, accelerator=accelerator)
    accelerator.backward(out["loss"])
    optimizer.step()
    assert torch.isfinite(out["loss"]) and all(torch.isfinite(p).all() for p in method.model.parameters())


def test_torch_loader_keeps_a_small_dataset_on_the_gpu():
    from pipelines import make_loader
    from pipelines.datasets import make_shapes

    loader = make_loader(make_shapes(64, image_size=16), batch_size=32, device="cuda")
    assert loader._images.is_cuda
    assert next(iter(loader))["images"].is_cuda
