"""The model's input and backbone: a fixed normalization layer, and the recipe's backbone
by timm name (the CIFAR nets of ``gssl_fast.model.backbones`` included), initialized."""

from __future__ import annotations

import contextlib
import difflib
import os
from typing import Callable

import timm
import torch

from gssl_fast.model import keras_resnet  # noqa: F401 (registers resnet38v2_cifar, G-SimCLR's notebooks' net)
from gssl_fast.model.backbones import CIFAR_BACKBONES  # registers the CIFAR nets in timm
from gssl_fast.sections import ModelConfig
from pipelines.errors import UserError, unknown_name

nn = torch.nn


class InputNormalize(nn.Module):
    """The model's first layer: pixels in, normalized floats out (docs/method.md section 1).

    ``[B, 3, H, W]`` uint8 (0..255) or float pixels in [0, 1] -> float32
    ``(x - mean) / std``, in ``channels_last`` memory format when asked. Loaders thus
    deliver pixels, and attacks work on pixels in [0, 1]. ``mean`` and ``std`` are
    buffers, so a checkpoint carries the normalization it was trained with.
    """

    def __init__(self, mean, std, *, channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # One fresh buffer, then in place (the caller's float input is never written).
        if images.dtype == torch.uint8:
            x = images.float().div_(255.0).sub_(self.mean)
        else:
            x = images.float() - self.mean
        x = x.div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


# ---- the recipe's backbone -------------------------------------------------------------------


def _kaiming(module: nn.Module) -> None:
    # The authors' long-tailed CIFAR model (after LDAM-DRW's resnet_cifar): every Linear
    # and Conv weight, kaiming-normal (fan_in, gain sqrt(2)); biases and cosine heads keep theirs.
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)


# model.init -> fn(module) re-initializing it in place
def _xavier_linear(module: nn.Module) -> None:
    # FixMatch's reference (kekmodel's WideResNet): every Linear weight xavier-normal, its
    # bias zero; convolutions keep the backbone's own initialization.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


INITS: dict[str, Callable[[nn.Module], None]] = {"default": lambda module: None, "kaiming": _kaiming,
                                                 "xavier_linear": _xavier_linear}


def initialize(module: nn.Module, name: str) -> nn.Module:
    """``module`` with the weight initialization ``name`` of :data:`INITS` applied."""
    if name not in INITS:
        raise unknown_name("model.init", name, INITS)
    INITS[name](module)
    return module


def last_conv_name(model: nn.Module) -> str:
    """Qualified name of the last ``nn.Conv2d`` registered in ``model`` (the Grad-CAM layer).

    For the nets of this file and timm's ResNets, registration order is execution order.
    """
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    return names[-1]


def _unknown_backbone(name: str) -> UserError:
    close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    return UserError(
        f"model.backbone = {name!r} is not a timm model; {hint}"
        f"CIFAR backbones: {', '.join(CIFAR_BACKBONES)}; any name of timm.list_models() works"
    )


@contextlib.contextmanager
def hub_cache_only(active: bool):
    """Pretrained weights from the local Hugging Face cache only, failing at once when
    they are not there (without network the hub client retries for about a minute);
    ``HF_HUB_OFFLINE=0`` in the environment lets it download."""
    import huggingface_hub.constants as hub

    keep = hub.HF_HUB_OFFLINE
    if active and os.environ.get("HF_HUB_OFFLINE") is None:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = keep


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The recipe's timm backbone without classifier: ``[B, 3, H, W] float -> [B, num_features] float``.

    ``pretrained`` weights must be reachable (timm/Hugging Face cache, or the network); a failure to
    get them is a ``UserError``, as is an unknown name. ``channels_last`` converts the weights.
    """
    name = cfg.backbone
    is_hub_name = ":" in name  # "hf-hub:..." / "local-dir:..." are resolved by timm itself
    if not is_hub_name and not timm.is_model(name):
        raise _unknown_backbone(name)
    if cfg.pretrained and not is_hub_name and not timm.models.is_model_pretrained(name):
        raise UserError(
            f"model.pretrained = true, but timm has no pretrained weights for model.backbone = {name!r}; "
            "set model.pretrained = false or pick a name of timm.list_pretrained()"
        )
    try:
        # drop_rate=None is dropped by create_model, so models without that argument still build
        with hub_cache_only(cfg.pretrained):
            model = timm.create_model(name, pretrained=cfg.pretrained, num_classes=0,
                                      drop_rate=cfg.drop_rate or None, **cfg.kwargs)
    except TypeError as err:
        raise UserError(f"model.kwargs = {dict(cfg.kwargs)} do not fit model.backbone = {name!r}: {err}") from None
    except (OSError, RuntimeError) as err:
        if not cfg.pretrained:
            raise
        raise UserError(
            f"could not load the pretrained weights of model.backbone = {name!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); they are read from the local timm / "
            "Hugging Face cache (HF_HOME, TORCH_HOME) only: put them there, or run with HF_HUB_OFFLINE=0 to "
            "download them; or set model.pretrained = false"
        ) from err
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
