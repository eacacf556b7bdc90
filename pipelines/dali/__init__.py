"""The DALI loader: decode, crop, flip and the localizable transform in one DALI graph.

The sources feed the same graph steps:

    files   ImageFolder or Tiny-ImageNet folders: ``fn.readers.file`` sharded by DALI's own
            ``shard_id`` / ``num_shards``, ``fn.decoders.image`` ("mixed" on a GPU), ``fn.resize``
    arrays  in-memory ``[N, H, W, 3]`` uint8 (CIFAR, the built-in dataset): ``fn.external_source``
    streams a folder's files or WebDataset shards, each window decoded every epoch:
            ``fn.external_source`` of the bytes, ``fn.decoders.image_slice``
            (:mod:`pipelines.dali.stream`, :mod:`pipelines.dali.shards`)

then, per sample, all native DALI operators (on the GPU when the pipeline has one):

    crop_step          random crop with zero padding             fn.slice
    localizable_step   the quadrant, flipped and rotated          fn.warp_affine (nearest, r x r out)
                       its channels permuted                      fn.coord_transform
                       written back over the image                fn.multi_paste
    output_step        whole-image flip, CHW, normalization       fn.crop_mirror_normalize

One ``fn.random.choice`` per sample draws a code that packs the whole-image flip and the
quadrant, flip, rotation and permutation; small tables indexed by the code give each
operator its per-sample matrix or anchors. The code and the crop offsets are pipeline
outputs, and the loader unpacks them into the ``[B]`` int64 parameters of the batch.

The whole-image flip is done last, by ``crop_mirror_normalize``, where it costs nothing:
mirroring the image after the localizable transform equals mirroring it before when the
transform's parameters are mirrored too (quadrant ``q -> q ^ 1``, rotation ``k -> -k``;
flips and permutations commute with it). The tables hold the mirrored parameters, the
batch reports the ones in the order of docs/method.md section 1 (crop, flip, transform).

    from pipelines.dali import make_loader
    loader = make_loader("tiny-imagenet-200", batch_size=256, image_size=64, device="cuda")
    for batch in loader:
        batch["images"], batch["labels"], batch["target_rotation"], ...
"""

from pipelines.dali.graph import (
    GraphOptions,
    build_array_pipeline,
    build_file_pipeline,
    code_fields,
    crop_step,
    localizable_step,
    localizable_tables,
    output_step,
    transform_graph,
    unpack_codes,
)
from pipelines.dali.build import build_loader, make_loader
from pipelines.dali.loader import DaliLoader
from pipelines.dali.source import open_source

__all__ = [
    "DaliLoader", "GraphOptions", "build_array_pipeline", "build_loader", "build_file_pipeline", "code_fields", "crop_step",
    "localizable_step", "localizable_tables", "make_loader", "open_source", "output_step", "transform_graph",
    "unpack_codes",
]
