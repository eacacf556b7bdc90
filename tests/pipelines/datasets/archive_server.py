"""For the fetch tests: a loopback HTTP server that serves bytes by path, honours
``Range: bytes=N-`` and can cut a response short or ignore ranges on request; and small
archives in the three official formats, with the data they hold."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pipelines.datasets.fetch import ARCHIVES, md5_of
from pipelines.datasets.testing import (
    write_cifar10_archive,
    write_cifar100_archive,
    write_tinyimagenet_archive,
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        state: ArchiveServer = self.server.state
        name, asked = self.path.lstrip("/"), self.headers.get("Range")
        data = state.files.get(name)
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if data is None:
            status = 404
        elif match and state.honour_range:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                status = 416
        state.requests.append((name, asked, status))
        if status in (404, 416):
            self.send_response(status)
            if status == 416:
                self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, state.cut_after = state.cut_after, None  # cuts one response only
        if cut is not None:
            # Promise the whole body, send part of it, hang up: a connection lost midway.
            self.wfile.write(body[:cut])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


class ArchiveServer:
    """``ThreadingHTTPServer`` on 127.0.0.1, port 0, in a daemon thread.

    files: URL path (no leading slash) -> bytes. requests: ``(path, Range header or None,
    status)`` of each GET, in order. cut_after: the next response stops after this many
    body bytes. honour_range: False answers every range request with 200 and the whole file.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None, int]] = []
        self.cut_after: int | None = None
        self.honour_range = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.state = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def add(self, path, as_name: str | None = None) -> str:
        """Serves the file at ``path`` as ``as_name`` (default its file name); returns its URL."""
        as_name = as_name or Path(path).name
        self.files[as_name] = Path(path).read_bytes()
        return self.url + as_name

    def close(self) -> None:
        """Stops serving and frees the port: connections to :attr:`url` are refused after."""
        if not self._thread.is_alive():
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _images(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


# name -> (train images, train labels, val images, val labels): what each test archive holds.
SAMPLES = {
    "cifar10": (_images(10, 32, 0), np.arange(10) % 10, _images(4, 32, 1), np.array([3, 1, 4, 1])),
    "cifar100": (_images(6, 32, 2), np.array([0, 5, 17, 42, 99, 3]), _images(2, 32, 3), np.array([7, 77])),
    "tinyimagenet": (_images(6, 16, 4), np.array([0, 0, 1, 1, 2, 2]), _images(3, 16, 5), np.array([2, 0, 1])),
}


def write_archives(folder) -> dict[str, Path]:
    """The three official archive formats holding :data:`SAMPLES`, under their official
    file names in ``folder``: name -> path."""
    folder = Path(folder)
    (c10, c100, tiny) = (SAMPLES[k] for k in ("cifar10", "cifar100", "tinyimagenet"))
    return {
        "cifar10": write_cifar10_archive(folder / "cifar-10-python.tar.gz", c10[0], c10[1],
                                         val_images=c10[2], val_labels=c10[3]),
        "cifar100": write_cifar100_archive(folder / "cifar-100-python.tar.gz", c100[0], c100[1],
                                           val_images=c100[2], val_labels=c100[3]),
        "tinyimagenet": write_tinyimagenet_archive(folder / "tiny-imagenet-200.zip", *tiny,
                                                   test_images=_images(2, 16, 6)),
    }


def point_archives_at(server: ArchiveServer, archives: dict[str, Path], monkeypatch) -> None:
    """Serves each archive and points its :data:`ARCHIVES` entry at the server, with the
    test archive's md5 (for this test only)."""
    for name, path in archives.items():
        url = server.add(path)
        monkeypatch.setitem(ARCHIVES, name, replace(ARCHIVES[name], url=url, md5=md5_of(path)))


# Fixtures of both fetch test files (imported there).


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A developer's http_proxy must not carry loopback requests away."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return write_archives(tmp_path_factory.mktemp("archives"))


@pytest.fixture
def server():
    server = ArchiveServer()
    yield server
    server.close()


@pytest.fixture
def served(server, archives, monkeypatch):
    """The server with every test archive; ARCHIVES points at it with the archives' md5s."""
    point_archives_at(server, archives, monkeypatch)
    return server
