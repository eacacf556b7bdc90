"""The images a finished run is evaluated on are the ones its validation loader read: a
streamed split is decoded again from its files, centre-cropped as in training, never
squashed whole into memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gssl_fast.analysis.split import eval_split
from gssl_fast.sections import DataConfig
from pipelines.datasets import list_files, load_dataset
from pipelines.datasets.testing import write_imagenet_style
from pipelines.stream import decodes, read_image

SIZE = 24


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_imagenet_style(tmp_path_factory.mktemp("tree"), (6, 3), classes=3, sizes=(30, 60))


def streamed(root) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=SIZE, stream=True, crop="random_resized",
                      decode_cache=False)


@pytest.mark.parametrize("split", ["val", "train"])
def test_a_streamed_split_is_read_centre_cropped_as_the_validation_loader_reads_it(tree, split):
    cfg = streamed(tree)
    got = eval_split(cfg, split)
    files = list_files(cfg, split)
    assert len(got) == len(files) and got.labels.tolist() == files.labels.tolist()
    positions = [len(files) - 1, 0, 2]
    centre = decodes(cfg)["val"]
    expected = np.stack([read_image(files.paths[p], centre, SIZE) for p in positions])
    assert np.array_equal(got.images(positions), expected)
    whole = [b["images"].permute(0, 2, 3, 1).numpy() for b in got.loader(4, "cpu")]
    assert np.array_equal(np.concatenate(whole)[positions], expected)
    # What an in-memory decode of the same files gives (each image squashed whole) is other pixels.
    squashed = load_dataset(dataclasses.replace(cfg, stream=False, crop="pad"), split).images[positions]
    assert not np.array_equal(squashed, expected)


def test_an_in_memory_split_is_its_dataset(tree):
    cfg = dataclasses.replace(streamed(tree), stream=False, crop="pad")
    got, dataset = eval_split(cfg, "val"), load_dataset(cfg, "val")
    assert np.array_equal(got.images([1, 0]), dataset.images[[1, 0]])
    assert np.array_equal(np.concatenate([b["images"].permute(0, 2, 3, 1).numpy() for b in got.loader(5, "cpu")]),
                          dataset.images)
