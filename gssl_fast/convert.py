"""Writes the dataset of a recipe to an FFCV .beton file, with a .beton.json beside it.

    python -m gssl_fast.convert RECIPE.toml [--split train|val] [--out PATH.beton]
                             [--mode raw|jpg] [--jpeg-quality 90] [--set SECTION.KEY=VALUE ...]

Any dataset the project reads (``data.name``: CIFAR, Tiny-ImageNet, ImageFolder, the
built-in one), with the recipe's long tail and ``image_size``. A user error (missing
recipe or data folder, bad key) prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.errors import UserError

USAGE_EXIT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gssl_fast.convert", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="recipe TOML file, e.g. recipes/cifar10_lt.toml")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--out", default=None, help="the .beton to write (default: data.beton of the recipe, train split)")
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
        out = args.out or (recipe.data.beton if args.split == "train" else "")
        if not out:
            raise UserError(f"no output file: give --out PATH.beton (or set data.beton in {args.recipe} "
                            "for the train split)")
        if not out.endswith(".beton"):
            raise UserError(f"the output file {out} must end in .beton")
        dataset = load_dataset(recipe.data, args.split)
        side = "x".join(map(str, dataset.image_size))
        print(f"writing {len(dataset)} {args.split} images of {recipe.data.name} ({side}, {args.mode}) to {out}",
              file=sys.stderr, flush=True)
        from pipelines.ffcv.convert import convert

        path = convert(dataset, out, mode=args.mode, jpeg_quality=args.jpeg_quality)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
