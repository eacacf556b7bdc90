"""The torch backend's own cases; the shared contract is tests/pipelines/test_loaders.py."""

import numpy as np
import pytest

from pipelines.torch import make_loader
from tests.pipelines.loader_contract import arrays, check_pixel_parity, collect


def test_pixel_parity_from_png_folder(tmp_path):
    from pipelines.datasets.testing import write_image_folder

    images, labels = arrays(40, 32, classes=4)
    write_image_folder(tmp_path / "folder", images, labels, ext="png")
    loader = make_loader(tmp_path / "folder", batch_size=16, augment=False, normalize=False, device="cpu")
    batches = collect(loader)
    ds = loader.dataset
    assert check_pixel_parity(batches, ds.images, ds.labels) == 40
    # ImageFolder order is by class folder then file name; every source image is present.
    assert sorted(map(bytes, ds.images.reshape(40, -1))) == sorted(map(bytes, images.reshape(40, -1)))


def test_bad_source_and_shape():
    with pytest.raises(ValueError, match="uint8"):
        make_loader((np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, int)), batch_size=2)
    with pytest.raises(TypeError, match="source"):
        make_loader(42, batch_size=2)
