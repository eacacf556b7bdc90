"""Settings every test shares."""

import os

import pytest

# The loopback archive server's fixtures (served, archives, ...) for the fetch tests.
pytest_plugins = ["tests.pipelines.datasets.archive_server"]


@pytest.fixture(autouse=True, scope="session")
def _decode_cache(tmp_path_factory):
    """Folder datasets decoded by the tests (and the runs they launch) are cached in a
    folder of the test session, not in the user's ~/.cache."""
    os.environ["GSSL_FAST_CACHE"] = str(tmp_path_factory.mktemp("decode-cache"))
    yield
