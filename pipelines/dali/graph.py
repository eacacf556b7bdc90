"""The DALI graph: sources, the per-sample steps, and the tables that drive them.

Graph steps are plain functions of DALI nodes; ``build_file_pipeline`` and
``build_array_pipeline`` are the thin ``@pipeline_def`` wrappers that add a source. DALI
is imported inside the functions, so importing this module does not need it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from pipelines.errors import UserError
from pipelines.localizable import FLIP_AXES, PARAM_KEYS, PERMUTATIONS
from pipelines.views import CropFlip, Localizable, Op, zero_padded_crop

# The ops of pipelines.views this graph runs as DALI operators, in the graph's order; a
# view's later ops run as torch ops after the pipeline (pipelines.views.native_prefix).
NATIVE = (zero_padded_crop, Localizable)

INSTALL_HELP = (
    "the DALI loader needs NVIDIA DALI: pip install -e '.[dali]' (nvidia-dali-cuda130; "
    "use nvidia-dali-cuda120 with CUDA 12 drivers), or set train.loader = 'torch'"
)


def import_dali():
    """``(fn, types, pipeline_def)``, imported on first use so that DALI stays optional."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        raise UserError(INSTALL_HELP) from None
    return fn, types, pipeline_def


# ---------------------------------------------------------------- codes and tables


def code_fields(tasks: Sequence[str], mirror: bool) -> dict[str, int]:
    """Mixed-radix layout of the per-sample code, most significant field first.

    ``hflip`` is the whole-image flip (2 values with augmentation); a disabled task has a
    single value (its identity). With no task there is no localizable transform at all.
    """
    fields = {"hflip": 2 if mirror else 1}
    if tasks:
        fields.update(quadrant=4, flip=2 if "flip" in tasks else 1,
                      rotation=4 if "rotation" in tasks else 1, perm=6 if "perm" in tasks else 1)
    return fields


def unpack_codes(code: torch.Tensor, fields: dict[str, int]) -> dict[str, torch.Tensor]:
    """``[B]`` integer codes -> one ``[B]`` int64 tensor per field of :func:`code_fields`."""
    code = code.to(torch.int64)
    out = {}
    for name, size in reversed(fields.items()):
        out[name] = code % size
        code = code // size
    return out


def localizable_tables(side: int, fields: dict[str, int], flip_axis: str) -> dict[str, np.ndarray]:
    """Per-code operator arguments of :func:`localizable_step`, one row per code.

    ``matrix`` ``[C, 2, 3]`` float32: ``fn.warp_affine`` destination-to-source map, in
    ``(x, y)`` pixel-corner coordinates, from the ``r x r`` patch to the quadrant of the
    image, flipped then rotated. Output pixel ``(i, j)`` of ``rot90(g, 1)`` reads
    ``g(j, r - 1 - i)``: about the patch centre, ``(row, col) -> (col, -row)``.
    ``channels`` ``[C, 3, 3]`` float32: output channel ``c`` takes input ``PERMUTATIONS[p][c]``.
    ``in_anchors``, ``out_anchors`` ``[C, 4, 2]`` int32 ``(row, col)``: ``fn.multi_paste``
    copies the three other quadrants in place and the patch onto its quadrant; no two
    regions overlap, so the result does not depend on the order of the pastes.
    """
    r = side // 2
    flip = np.diag([1, -1]) if FLIP_AXES[flip_axis] == -1 else np.diag([-1, 1])  # (row, col)
    rot = np.array([[0, 1], [-1, 0]])
    swap = np.array([[0, 1], [1, 0]])  # (row, col) <-> (x, y)
    corners = [((j // 2) * r, (j % 2) * r) for j in range(4)]
    rows: dict[str, list] = {"matrix": [], "channels": [], "in_anchors": [], "out_anchors": []}
    for hflip, q, f, k, p in itertools.product(*(range(fields.get(n, 1)) for n in ("hflip", *PARAM_KEYS))):
        if hflip:  # crop_mirror_normalize mirrors afterwards: apply the mirrored parameters
            q, k = q ^ 1, -k % 4
        a = swap @ (flip if f else np.eye(2)) @ np.linalg.matrix_power(rot, k) @ swap
        centre = np.array([corners[q][1], corners[q][0]]) + r / 2  # (x, y) of the quadrant
        rows["matrix"].append(np.hstack([a, (centre - a @ [r / 2, r / 2])[:, None]]))
        rows["channels"].append(np.eye(3)[list(PERMUTATIONS[p])])
        others = [c for j, c in enumerate(corners) if j != q]
        rows["in_anchors"].append(others + [(0, 0)])
        rows["out_anchors"].append(others + [corners[q]])
    dtypes = {"matrix": np.float32, "channels": np.float32, "in_anchors": np.int32, "out_anchors": np.int32}
    return {k: np.asarray(v, dtype=dtypes[k]) for k, v in rows.items()}


# ---------------------------------------------------------------- graph steps


@dataclass(frozen=True)
class GraphOptions:
    """What the graph does after the source; ``size`` is ``(H, W)`` of every image."""

    size: tuple[int, int]
    tasks: tuple[str, ...]
    augment: bool
    padding: int
    flip_axis: str
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std) in [0, 1] units
    gpu: bool
    hflip: bool = True  # whole-image flip as part of the augmentation

    @property
    def fields(self) -> dict[str, int]:
        return code_fields(self.tasks, self.augment and self.hflip)


def graph_options(ops: Sequence[Op], *, size: tuple[int, int], gpu: bool, normalize) -> GraphOptions:
    """The graph of ``ops``, a view's leading ops among :data:`NATIVE`."""
    crop = next((op for op in ops if isinstance(op, CropFlip)), None)
    loc = next((op for op in ops if isinstance(op, Localizable)), None)
    return GraphOptions(size=size, tasks=loc.tasks if loc else (), augment=crop is not None,
                        padding=crop.padding if crop else 0, flip_axis=loc.flip_axis if loc else "horizontal",
                        normalize=normalize, gpu=gpu, hflip=crop.hflip if crop else False)


def output_name(view: str, key: str) -> str:
    """Name of the pipeline output ``key`` (images, code, crop_start) of ``view``."""
    return f"{view}:{key}"


def crop_step(images, *, padding: int, size: tuple[int, int]):
    """Random crop with zero padding (torchvision ``RandomCrop(size, padding)``).

    images: HWC uint8. Returns the cropped images and the per-sample window start
    ``[2]`` int32 ``(row, col)`` in ``[-padding, padding]`` (= crop offset - padding).
    """
    fn, types, _ = import_dali()
    starts = types.Constant(np.arange(-padding, padding + 1, dtype=np.int32), device="cpu")
    start = fn.random.choice(starts, shape=[2])
    cropped = fn.slice(images, start=start, shape=list(size), axes=[0, 1],
                       out_of_bounds_policy="pad", fill_values=0)
    return cropped, start


def localizable_step(images, code, tables: dict[str, np.ndarray], side: int):
    """The localizable transform of each image, chosen by its ``code``.

    images: HWC uint8 ``side x side``; code: per-sample int32 scalar (row of ``tables``).
    Three operators: the patch is read flipped and rotated by one nearest-neighbour warp
    (pixel centres map to pixel centres, so no value is interpolated), its channels are
    permuted by a 0/1 matrix, and the patch and the three untouched quadrants are pasted.
    """
    fn, types, _ = import_dali()
    r = side // 2

    def row(name):
        return types.Constant(tables[name], device="cpu")[code]

    patch = fn.warp_affine(images, matrix=row("matrix"), size=[r, r], interp_type=types.INTERP_NN, fill_value=0)
    patch = fn.coord_transform(patch, M=row("channels"), dtype=types.UINT8)
    shapes = types.Constant(np.full((4, 2), r, dtype=np.int32), device="cpu")
    return fn.multi_paste(images, images, images, patch, in_anchors=row("in_anchors"),
                          out_anchors=row("out_anchors"), shapes=shapes, output_size=[side, side])


def output_step(images, *, mirror, normalize):
    """Whole-image flip where ``mirror`` is 1, HWC -> CHW, and float32 ``(x / 255 - mean) / std``
    (or uint8 when ``normalize`` is None), in one ``fn.crop_mirror_normalize``."""
    fn, types, _ = import_dali()
    if normalize is None:
        kw = {"dtype": types.UINT8}
    else:
        mean, std = normalize
        kw = {"dtype": types.FLOAT, "mean": [255.0 * m for m in mean], "std": [255.0 * s for s in std]}
    if mirror is not None:
        kw["mirror"] = mirror
    return fn.crop_mirror_normalize(images, output_layout="CHW", **kw)


def transform_graph(images, opts: GraphOptions) -> dict:
    """Crop, localizable transform, flip and normalization of HWC uint8 ``images``.

    Returns the named outputs: ``images`` ``[3, H, W]`` and where drawn ``code`` (see
    :func:`code_fields`) and ``crop_start`` ``[2]``.
    """
    fn, _, _ = import_dali()
    out = {}
    if opts.augment and opts.padding:
        images, out["crop_start"] = crop_step(images, padding=opts.padding, size=opts.size)
    fields = opts.fields
    size = int(np.prod(list(fields.values())))
    code = fn.random.choice(size) if size > 1 else None
    if opts.tasks:
        tables = localizable_tables(opts.size[0], fields, opts.flip_axis)
        images = localizable_step(images, code, tables, opts.size[0])
    mirror = code // (size // 2) if fields["hflip"] == 2 else None
    out["images"] = output_step(images, mirror=mirror, normalize=opts.normalize)
    if code is not None:
        out["code"] = code
    return out


# ---------------------------------------------------------------- pipelines


def view_graphs(images, indices, views: dict[str, GraphOptions]) -> dict:
    """The outputs of every view's graph over the same decoded ``images`` (each view
    draws its own parameters), named by :func:`output_name`, plus ``indices``."""
    out = {"indices": indices}
    for name, opts in views.items():
        out.update({output_name(name, k): node for k, node in transform_graph(images, opts).items()})
    return out


def build_file_pipeline(files: Sequence[str], indices: Sequence[int], *, shard_id: int, num_shards: int,
                        views: dict[str, GraphOptions], **pipeline_kwargs):
    """Pipeline reading ``files`` (in this order) and labelling each with its entry of
    ``indices``, with the graph of each of ``views``; returns ``(pipeline, output
    names)``. ``pipeline_kwargs``: batch_size, num_threads, device_id, seed, ... of
    ``nvidia.dali.Pipeline``."""
    gpu = any(opts.gpu for opts in views.values())
    fn, types, pipeline_def = import_dali()
    names = []

    @pipeline_def(**pipeline_kwargs)
    def file_pipeline():
        # pad_last_batch: the shard ends on a whole batch (repeating its last file), so
        # the reader never reads past this process's share; the loader drops the repeats.
        data, index = fn.readers.file(files=list(files), labels=list(indices), shard_id=shard_id,
                                      num_shards=num_shards, stick_to_shard=True, pad_last_batch=True,
                                      name="files")
        images = fn.decoders.image(data, device="mixed" if gpu else "cpu", output_type=types.RGB)
        # Exact copy for a file of the right size; bilinear with antialiasing otherwise.
        size = next(iter(views.values())).size
        images = fn.resize(images, size=list(size), antialias=True)
        out = view_graphs(images, index, views)
        names.extend(out)
        return tuple(out.values())

    return file_pipeline(), names


def build_array_pipeline(batches: Iterator[tuple[np.ndarray, np.ndarray]], *, views: dict[str, GraphOptions],
                         **pipeline_kwargs):
    """Pipeline over ``(images [b, H, W, 3] uint8, indices [b] int64)`` batches from
    ``batches``, with the graph of each of ``views``; the last batch may be smaller.
    Returns ``(pipeline, output names)``."""
    fn, _, pipeline_def = import_dali()
    names = []

    @pipeline_def(**pipeline_kwargs)
    def array_pipeline():
        # Slicing in-memory uint8 arrays is a memcpy per batch, so a parallel
        # (multi-process) external source would add more than it saves.
        images, index = fn.external_source(source=batches, num_outputs=2, batch=True, layout=["HWC", ""])
        if any(opts.gpu for opts in views.values()):
            images = images.gpu()
        out = view_graphs(images, index, views)
        names.extend(out)
        return tuple(out.values())

    return array_pipeline(), names


def dali_shard_size(n: int, shard_id: int, num_shards: int) -> int:
    """Samples DALI's readers give shard ``shard_id``: a contiguous slice of the list."""
    return n * (shard_id + 1) // num_shards - n * shard_id // num_shards
