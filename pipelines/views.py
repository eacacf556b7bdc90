"""Views: what a loader makes of each image, as a chain of batched ops on the device.

A view is a tuple of ops applied in order to a ``[B, 3, H, W]`` uint8 batch on the
training device. Each op draws its ``[B]`` int64 parameters from the loader's CPU
generator (so a seed gives the same draws on every device), applies itself with a fixed
number of whole-batch tensor ops, and reports the parameters with the batch. These
torch ops are the reference semantics: a backend may run a leading part of a view as
its own operators (DALI graph, FFCV kernels; ``native_prefix``) and runs the rest with
:func:`apply_ops` right after it hands the batch over, never per-sample Python.

    CropFlip(padding, hflip)    random crop with zero (or reflect) padding, whole-image left-right flip
    Localizable(tasks, ...)     the localizable pretext transform and its pseudo-labels
    Grayscale(p)                random grayscale (torchvision's luma, kept as 3 channels)
    PerBatch(op)                ``op`` with one draw for the whole batch (G-SimCLR's notebooks)

A loader may deliver several views of each image, each with its own draws (a method's
weak and strong views, SimCLR's two crops): ``views={"weak": ..., "strong": ...}``.
The view called ``images`` (the default) carries its parameters under their own names
(``quadrant``, ``target_rotation``, ...); any other view ``v`` under ``v/quadrant``, ....
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from pipelines.augment import PADDING_MODES, crop_flip, draw_crop_flip, normalize
from pipelines.errors import unknown_name
from pipelines.localizable import (
    PARAM_KEYS,
    TASKS,
    apply_localizable,
    apply_localizable_,
    check_tasks,
    draw_localizable,
    row_strides,
)

DEFAULT_VIEW = "images"


class Op:
    """One batched op of a view: ``draw`` its parameters, ``apply`` them."""

    keys: tuple[str, ...] = ()

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{key: [B] int64}`` drawn from the CPU ``generator``."""
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 3, H, W]`` uint8 of any strides (a loader's crop hands over windows with
        gaps between their rows) -> a new ``[B, 3, H, W]`` uint8 batch."""
        raise NotImplementedError

    def apply_(self, images: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`apply` on a batch the caller owns, which the op may overwrite (an op
        that can work in place saves a copy); returns the result."""
        return self.apply(images, params)


@dataclass(frozen=True)
class CropFlip(Op):
    """Random crop with ``padding`` pixels of padding (torchvision ``RandomCrop(H,
    padding, padding_mode=mode)``, ``mode`` "zeros" or "reflect"), then a random
    whole-image left-right flip (off with ``hflip=False``: the flip is still drawn, so
    the crops stay the same)."""

    padding: int = 4
    hflip: bool = True
    mode: str = "zeros"
    keys = ("crop_y", "crop_x", "hflip")

    def __post_init__(self):
        if self.padding < 0:
            raise ValueError(f"crop padding must be >= 0, got {self.padding}")
        if self.mode not in PADDING_MODES:
            raise unknown_name("crop padding mode", self.mode, PADDING_MODES)

    def draw(self, batch_size, generator):
        drawn = draw_crop_flip(batch_size, padding=self.padding, generator=generator)
        if not self.hflip:
            drawn["hflip"] = torch.zeros_like(drawn["hflip"])
        return drawn

    def apply(self, images, params):
        return crop_flip(images, params["crop_y"], params["crop_x"], params["hflip"], self.padding, self.mode)


@dataclass(frozen=True)
class Localizable(Op):
    """The localizable transform (docs/method.md section 1) of the enabled ``tasks``; reports the
    quadrant, flip, rotation and perm (identity 0 for a disabled task) and the
    ``target_<task>`` pseudo-labels."""

    tasks: tuple[str, ...] = tuple(TASKS)
    flip_axis: str = "horizontal"

    def __post_init__(self):
        object.__setattr__(self, "tasks", check_tasks(self.tasks))
        if not self.tasks:
            raise ValueError("Localizable needs at least one task; leave the op out for none")

    @property
    def keys(self) -> tuple[str, ...]:
        return (*PARAM_KEYS, *(f"target_{t}" for t in self.tasks))

    def draw(self, batch_size, generator):
        return draw_localizable(batch_size, tasks=self.tasks, generator=generator)

    def apply(self, images, params):
        return apply_localizable(images, **{k: params[k] for k in PARAM_KEYS}, flip_axis=self.flip_axis)

    def apply_(self, images, params):
        if row_strides(images) is None:
            return self.apply(images, params)
        return apply_localizable_(images, **{k: params[k] for k in PARAM_KEYS}, flip_axis=self.flip_axis)


@dataclass(frozen=True)
class Grayscale(Op):
    """With probability ``p`` per image, its luma ``0.2989 R + 0.587 G + 0.114 B`` in all
    three channels (torchvision's ``rgb_to_grayscale``, batched)."""

    p: float = 0.2
    keys = ("grayscale",)

    def __post_init__(self):
        if not 0 <= self.p <= 1:
            raise ValueError(f"grayscale probability must be in [0, 1], got {self.p}")

    def draw(self, batch_size, generator):
        return {"grayscale": (torch.rand(batch_size, generator=generator) < self.p).long()}

    def apply(self, images, params):
        from torchvision.transforms.v2.functional import rgb_to_grayscale

        mask = params["grayscale"].to(device=images.device, dtype=torch.bool)[:, None, None, None]
        return torch.where(mask, rgb_to_grayscale(images, num_output_channels=3), images)


@dataclass(frozen=True)
class PerBatch(Op):
    """``op`` drawn once per batch: every image takes the first draw's parameters (reported
    per image, as ever). G-SimCLR's notebooks call their Keras augmentation on the batch
    tensor, so each ``tf.random.uniform([])`` coin and ``tf.image.random_*`` factor is one
    scalar for the whole batch."""

    op: Op

    def __post_init__(self):
        if not isinstance(self.op, Op):
            raise TypeError(f"PerBatch wraps an op of pipelines.views, got {self.op!r}")

    @property
    def keys(self) -> tuple[str, ...]:
        return self.op.keys

    def draw(self, batch_size, generator):
        return {k: v.expand(batch_size).clone() for k, v in self.op.draw(1, generator).items()}

    def apply(self, images, params):
        return self.op.apply(images, params)

    def apply_(self, images, params):
        return self.op.apply_(images, params)


View = tuple[Op, ...]


def standard_view(*, augment: bool = True, padding: int = 4, hflip: bool = True,
                  tasks: Sequence[str] = (), flip_axis: str = "horizontal") -> View:
    """The G-SSL training view (docs/method.md section 1): crop and flip, then the localizable
    transform of ``tasks``; with ``augment=False`` and no tasks, the image as it is."""
    ops: list[Op] = [CropFlip(padding, hflip)] if augment else []
    if tasks:
        ops.append(Localizable(tuple(tasks), flip_axis))
    return tuple(ops)


def check_views(views: Mapping[str, Sequence[Op]]) -> dict[str, View]:
    """``{name: view}`` with every view a tuple of ops; at least one view."""
    if not views:
        raise ValueError("a loader needs at least one view")
    out = {}
    for name, view in views.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"view names are non-empty strings without '/', got {name!r}")
        view = tuple(view)
        bad = [op for op in view if not isinstance(op, Op)]
        if bad:
            raise TypeError(f"view {name!r} holds {bad[0]!r}, not an op of pipelines.views")
        out[name] = view
    return out


def zero_padded_crop(op: Op) -> bool:
    """A ``CropFlip`` with zero padding: the crop the DALI graph and the FFCV kernels run."""
    return type(op) is CropFlip and op.mode == "zeros"


def native_prefix(view: View, native: Sequence) -> int:
    """How many leading ops of ``view`` a backend runs itself: ``native`` lists what its
    graph runs, in the order its graph applies them, each an op type or a predicate
    ``fn(op) -> bool`` (a type with only some settings); each may appear once."""

    def matches(kind, op) -> bool:
        return type(op) is kind if isinstance(kind, type) else kind(op)

    at = 0
    for count, op in enumerate(view):
        kinds = [i for i, kind in enumerate(native) if matches(kind, op) and i >= at]
        if not kinds:
            return count
        at = kinds[0] + 1
    return len(view)


def apply_ops(images: torch.Tensor, ops: Sequence[Op], generator: torch.Generator, *,
              owned: bool = False) -> tuple[torch.Tensor, dict]:
    """Draws and applies ``ops`` in order: ``(images, {key: [B] int64 on the images' device})``.
    ``images`` is left as it is unless ``owned`` (a batch the caller made for this); every
    op after the first may reuse its input, a batch the op before made."""
    params: dict[str, torch.Tensor] = {}
    for i, op in enumerate(ops):
        drawn = {k: v.to(images.device) for k, v in op.draw(images.shape[0], generator).items()}
        images = op.apply_(images, drawn) if i or owned else op.apply(images, drawn)
        params.update(drawn)
    return images, params


def view_key(view: str, key: str) -> str:
    """Batch key of ``key`` for ``view``: as is for the default view, ``view/key`` otherwise."""
    return key if view == DEFAULT_VIEW else f"{view}/{key}"


def finish_view(view: str, images: torch.Tensor, params: Mapping[str, torch.Tensor],
                normalize_to=None) -> dict[str, torch.Tensor]:
    """The batch entries of one view: its images under the view's name (normalized when
    ``normalize_to = (mean, std)``), its parameters, and identity localizable parameters
    when it drew none."""
    if normalize_to is not None and images.dtype == torch.uint8:
        images = normalize(images, *normalize_to)
    images = images.contiguous()  # an op may leave a strided batch (read_windows: contiguous rows only)
    missing = [k for k in PARAM_KEYS if k not in params]
    zeros = {k: torch.zeros(images.shape[0], dtype=torch.int64, device=images.device) for k in missing}
    return {view: images, **{view_key(view, k): v for k, v in {**params, **zeros}.items()}}
