"""Downloads a dataset's official archive and unpacks it where the recipes look for it.

    python -m gssl_fast.fetch NAME [--root DIR] [--mirror URL]

NAME: cifar10, cifar100 or tinyimagenet. The folder lands at ``DIR/<folder>`` (default
``data/cifar-10-batches-py`` and so on: the recipes' ``data.root``), and its path is the
one line printed on stdout. A cut download resumes on the next run; without network, put
the archive into DIR by hand and rerun. A user error (no connection, a bad checksum, an
unknown name) prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.datasets.fetch import ARCHIVES, DEFAULT_ROOT, fetch
from pipelines.errors import UserError

USAGE_EXIT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gssl_fast.fetch", description=__doc__.splitlines()[0])
    # Not argparse choices: an unknown name gets the project's one-line error listing the valid ones.
    p.add_argument("name", metavar="NAME", help=f"the dataset: {', '.join(sorted(ARCHIVES))}")
    p.add_argument("--root", default=DEFAULT_ROOT,
                   help=f"folder to download and unpack into (default: {DEFAULT_ROOT}, where the recipes look)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="fetch URL/<archive file name> instead of the official URL; the same checksums apply")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        folder = fetch(args.name, args.root, mirror=args.mirror)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    if Path(args.root) != Path(DEFAULT_ROOT):
        # The recipes name the default place; elsewhere the run must be told (stderr: stdout is the path alone).
        print(f'recipes read data.root = "{DEFAULT_ROOT}/{folder.name}"; set data.root = "{folder}" '
              f"(or pass --set data.root={folder})", file=sys.stderr)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
