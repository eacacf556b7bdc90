"""Writes the dataset of a recipe to an FFCV .beton file or to WebDataset shards.

A .beton gets a .beton.json beside it; shards a listing (``DIR/<split>.json``).

    python -m gssl_fast.convert RECIPE.toml [--split train|val] [--out PATH.beton]
                             [--mode raw|jpg] [--jpeg-quality 90] [--set SECTION.KEY=VALUE ...]
    python -m gssl_fast.convert RECIPE.toml --format webdataset --out DIR [--shard-size 1000]
                             [--split train|val] [--set SECTION.KEY=VALUE ...]

Any dataset the project reads (``data.name``: CIFAR, Tiny-ImageNet, ImageFolder, the
built-in one), with the recipe's long tail (and, but for a folder's files written to
shards as they are, its ``image_size``). Shards (``pipelines.datasets.shards``): both
splits unless ``--split``, ``DIR/<split>-000000.tar ...`` and ``DIR/<split>.json``; the
training split in an order drawn from ``data.seed``; printed: the ``data.root`` /
``data.val_root`` pattern of each split. A user error (missing recipe or data folder, bad
key) prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.errors import UserError

USAGE_EXIT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gssl_fast.convert", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="recipe TOML file, e.g. recipes/cifar10_lt.toml")
    p.add_argument("--format", default="beton", choices=["beton", "webdataset"],
                   help="beton: one FFCV file (default); webdataset: tar shards of encoded images")
    p.add_argument("--split", default=None, choices=["train", "val"],
                   help="the split to write (default: train for beton, both for webdataset)")
    p.add_argument("--out", default=None, help="the .beton to write (default: data.beton of the recipe, train "
                   "split); webdataset: the folder of the shards")
    p.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help="webdataset: samples per shard (default 1000)")
    p.add_argument("--mode", default="raw", choices=["raw", "jpg"],
                   help="raw: exact pixels (default); jpg: JPEG, smaller and lossy")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..100 of --mode jpg")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key (TOML value; bare words are strings); repeatable")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from gssl_fast.config import load_recipe
        from pipelines.datasets import load_dataset

        recipe = load_recipe(args.recipe, args.set)
        if args.format == "webdataset":
            for pattern in write_shards(recipe, args):
                print(pattern)
            return 0
        if args.shard_size is not None:
            raise UserError("--shard-size is for --format webdataset")
        split = args.split or "train"
        out = args.out or (recipe.data.beton if split == "train" else "")
        if not out:
            raise UserError(f"no output file: give --out PATH.beton (or set data.beton in {args.recipe} "
                            "for the train split)")
        if not out.endswith(".beton"):
            raise UserError(f"the output file {out} must end in .beton")
        dataset = load_dataset(recipe.data, split)
        side = "x".join(map(str, dataset.image_size))
        print(f"writing {len(dataset)} {split} images of {recipe.data.name} ({side}, {args.mode}) to {out}",
              file=sys.stderr, flush=True)
        from pipelines.ffcv.convert import convert

        path = convert(dataset, out, mode=args.mode, jpeg_quality=args.jpeg_quality)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    print(path)
    return 0


def write_shards(recipe, args) -> list[str]:
    """Shards of the splits ``args`` asks for (``pipelines.datasets.shards.write_dataset``);
    the brace pattern naming each split's shards."""
    import json
    from pathlib import Path

    from pipelines.datasets.shards import SHARD_SIZE, write_dataset

    if not args.out:
        raise UserError("no output folder: give --out DIR for the shards")
    if args.mode != "raw" or args.jpeg_quality != 90:
        raise UserError("--mode and --jpeg-quality are for --format beton: shards keep a folder's files as they are")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file; shards go into a folder")
    patterns = []
    for split in [args.split] if args.split else ["train", "val"]:
        seed = recipe.data.seed if split == "train" else None
        print(f"writing the {split} split of {recipe.data.name} as shards into {args.out}", file=sys.stderr, flush=True)
        listing = write_dataset(recipe.data, split, args.out, shard_size=args.shard_size or SHARD_SIZE, seed=seed)
        last = len(json.loads(listing.read_text())["shards"]) - 1
        patterns.append(str(Path(args.out) / f"{split}-{{000000..{last:06d}}}.tar"))
    return patterns


if __name__ == "__main__":
    sys.exit(main())
