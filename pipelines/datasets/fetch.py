"""Official dataset archives: downloaded (resumably), checked, unpacked where the readers look.

    ARCHIVES                    data.name -> Archive(url, file, md5, folder)
    fetch(name, root)           ``<root>/<folder>``, downloaded and unpacked when missing
    root_for(name, data_root)   the ``root`` to fetch into for a recipe's ``data.root``

With the default ``root = "data"`` the folders land where the recipes' ``data.root``
defaults point (``data/cifar-10-batches-py``, ``data/cifar-100-python``,
``data/tiny-imagenet-200``). What appears under ``root``, in order:

    <root>/<file>.part           the download so far; a rerun resumes it (HTTP Range)
    <root>/<file>                the whole archive, once its md5 matched; kept
    <root>/.<name>.unpack-XXXX   the archive unpacked, then its one folder renamed to...
    <root>/<folder>              ...the dataset: there whole or not at all

Without network, put ``<file>`` into ``<root>/`` by hand and fetch again: it is checked
and unpacked without a connection. Every failure is a one-line :class:`UserError`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipelines.errors import UserError, unknown_name

DEFAULT_ROOT = "data"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per socket operation: a stalled server fails instead of hanging a run


@dataclass(frozen=True)
class Archive:
    """One dataset's official archive.

    url: where it is published. file: its file name, also its name on a mirror.
    md5: hex digest of the whole file (the ones torchvision checks). folder: the single
    top-level folder it unpacks into, which the dataset's reader takes as ``data.root``.
    """

    url: str
    file: str
    md5: str
    folder: str

    def url_on(self, mirror: str | None) -> str:
        """The official URL, or ``<mirror>/<file>`` when a mirror is given."""
        return f"{mirror.rstrip('/')}/{self.file}" if mirror else self.url


# data.name -> its archive. CIFAR's URLs and md5s are torchvision's (datasets/cifar.py).
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
    ),
    "tinyimagenet": Archive(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200",
    ),
}


def archive(name: str) -> Archive:
    """The :class:`Archive` of ``name``; an unknown name lists the valid ones."""
    if name not in ARCHIVES:
        raise unknown_name("dataset to fetch", name, ARCHIVES)
    return ARCHIVES[name]


def root_for(name: str, data_root) -> Path:
    """The ``root`` to fetch ``name`` into so that ``data_root`` (a recipe's ``data.root``)
    reads it: its parent when it names the archive's folder (``data/cifar-10-batches-py``
    -> ``data``), else itself, since every reader also accepts the folder holding it."""
    if not str(data_root):
        raise UserError(f"data.root is empty; set it to where {name} should go, e.g. "
                        f"{DEFAULT_ROOT}/{archive(name).folder}")
    data_root = Path(data_root).expanduser()
    return data_root.parent if data_root.name == archive(name).folder else data_root


def fetch(name: str, root=DEFAULT_ROOT, *, mirror: str | None = None, progress: bool | None = None) -> Path:
    """``<root>/<folder>`` of dataset ``name`` (a key of :data:`ARCHIVES`), fetched if missing.

    A folder already there is returned at once, nothing downloaded. Else the archive
    ``<root>/<file>`` is used when present (placed by hand: no network), or downloaded
    from the official URL (``mirror``: from ``<mirror>/<file>``) into ``<root>/<file>.part``,
    resuming a ``.part`` left by an earlier run. Its md5 is checked before anything is
    unpacked; the archive is kept beside the dataset folder.

    progress: a tqdm bar on stderr; None shows it when stderr is a terminal.
    """
    spec = archive(name)
    root = Path(root).expanduser()
    target = root / spec.folder
    if target.is_dir():
        return target
    whole = root / spec.file
    if not whole.is_file():
        url = spec.url_on(mirror)
        by_hand = (f"to place it by hand, download {spec.file} (from {url} or a mirror) into {root}/ "
                   "and rerun")
        part = download(url, root / f"{spec.file}.part", by_hand=by_hand, progress=progress)
        _check_md5(part, spec, url=url)
        os.replace(part, whole)
    else:
        _check_md5(whole, spec, url=None)
    return unpack(whole, spec, name)


def _one_line(reason) -> str:
    return " ".join(str(reason).split()) or type(reason).__name__


def _progress_bar(show: bool | None, total: int | None, initial: int, desc: str):
    from tqdm import tqdm  # here, not at the top: importing pipelines stays light

    show = sys.stderr.isatty() if show is None else bool(show)
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not show, dynamic_ncols=True)


def _open(url: str, have: int, by_hand: str):
    """The response to GET ``url`` (from byte ``have`` on when > 0), or None when the
    server says there is nothing past ``have`` (416: the ``.part`` is already whole)."""
    headers = {"User-Agent": "pipelines-fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            return None
        raise UserError(f"cannot download {url}: HTTP {e.code} {_one_line(e.reason)}; {by_hand}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: a malformed URL
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise UserError(f"cannot download {url} ({_one_line(reason)}); {by_hand}") from None


def _body_start(response, have: int, url: str, part: Path) -> int:
    """The byte of the file the response body starts at: ``have`` for a 206 that resumes,
    0 for anything else (a server that ignores Range sends the whole file again)."""
    if getattr(response, "status", None) != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-", content_range)
    if match is None or int(match.group(1)) != have:
        raise UserError(f"{url} answered a request for bytes {have}- with Content-Range {content_range!r}; "
                        f"delete {part} and rerun to download from the start")
    return have


def download(url: str, part: Path, *, by_hand: str = "", progress: bool | None = None) -> Path:
    """Downloads ``url`` into ``part``, resuming from its size when it exists; returns ``part``.

    A server that answers a range request with 200 gets the file written from the start.
    Nothing is created before the server answers, so a refused connection leaves no trace;
    a transfer cut midway keeps the bytes so far for the next run. ``by_hand`` ends the
    error messages (how to get the file without this function).
    """
    part = Path(part)
    by_hand = by_hand or f"download {url} yourself into {part.parent}/ and rerun"
    have = part.stat().st_size if part.is_file() else 0
    response = _open(url, have, by_hand)
    if response is None:
        return part
    with response:
        start = _body_start(response, have, url, part)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab" if start else "wb") as out, \
                _progress_bar(progress, total, start, part.name.removesuffix(".part")) as bar:
            got, error = _copy(response, out, bar, part)
    size = start + got
    if error is None and (total is None or size >= total):
        return part
    if size == 0:
        part.unlink(missing_ok=True)  # nothing worth keeping: leave root as it was
    said = f" ({_one_line(error)})" if error is not None else ""
    of = f" of {total}" if total is not None else ""
    kept = f"the bytes so far are kept in {part}: rerun to resume" if size else "nothing was kept"
    raise UserError(f"download of {url} stopped after {size}{of} bytes{said}; {kept}, or {by_hand}")


def _copy(response, out, bar, part: Path) -> tuple[int, BaseException | None]:
    """Copies the body to ``out``: ``(bytes written, the network error that cut it or None)``.
    Only reads are network errors; a failed write (a full disk) is its own message."""
    got = 0
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as e:
            return got, e
        if not chunk:
            return got, None
        try:
            out.write(chunk)
        except OSError as e:
            raise UserError(f"cannot write {part}: {_one_line(e)}") from None
        got += len(chunk)
        bar.update(len(chunk))


def md5_of(path) -> str:
    """Hex md5 of the file at ``path``, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)  # a checksum, not a signature
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(path: Path, spec: Archive, *, url: str | None) -> None:
    """Refuses ``path`` unless its md5 is ``spec.md5``. A bad download is deleted (resuming
    it could never repair it); a file placed by hand (``url`` None) is left alone."""
    found = md5_of(path)
    if found == spec.md5:
        return
    if url is not None:
        path.unlink(missing_ok=True)
        raise UserError(f"{spec.file} downloaded from {url} has md5 {found}, expected {spec.md5}; the download "
                        f"was deleted ({path}) and nothing was unpacked: rerun to download it again")
    raise UserError(f"{path} has md5 {found}, expected {spec.md5}: it is not the official {spec.file} or is "
                    f"incomplete; it was left as it is and nothing was unpacked: replace it with the file from "
                    f"{spec.url}, or delete it and rerun to download it")


def unpack(path: Path, spec: Archive, name: str) -> Path:
    """Unpacks the archive ``path`` into a temporary folder beside it, then renames its
    ``spec.folder`` to ``<path's folder>/<spec.folder>``, so that folder is there whole or
    not at all. Temporary folders left by a killed run are removed first: two fetches of
    one dataset into one root must not run at once (call it from one process)."""
    root = path.parent
    target = root / spec.folder
    for leftover in root.glob(f".{name}.unpack-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.unpack-", dir=root))
    try:
        _extract(path, scratch)
        unpacked = scratch / spec.folder
        if not unpacked.is_dir():
            raise UserError(f"{path} holds no {spec.folder}/ folder, so it is not the official {spec.file}; "
                            "nothing was unpacked")
        try:
            os.replace(unpacked, target)
        except OSError as e:
            if not target.is_dir():  # else another process put it there first: same files
                raise UserError(f"cannot move the unpacked {spec.folder} to {target}: {_one_line(e)}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _check_member(member: str, path: Path) -> None:
    """Refuses a member name that would land outside the folder it is unpacked into."""
    parts = PurePosixPath(member.replace("\\", "/")).parts
    if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise UserError(f"{path} holds the unsafe member {member!r} (an absolute path or one with '..'); "
                        "nothing was unpacked: use the official archive")


def _extract(path: Path, into: Path) -> None:
    """Unpacks a .zip or a tar (any compression) into ``into``, after checking every
    member's name; tar members also go through tarfile's "data" filter, which refuses
    links out of ``into`` and device files."""
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    _check_member(member, path)
                zf.extractall(into)
            return
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member.name, path)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
                return
            # Pythons without extraction filters: the official archives hold files and folders only.
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise UserError(f"{path} holds {member.name!r}, which is not a file or folder; "
                                    "nothing was unpacked: use the official archive")
            tar.extractall(into)
    except getattr(tarfile, "FilterError", ()) as e:  # a link out of ``into``, a device file
        raise UserError(f"{path} holds an unsafe member ({_one_line(e)}); nothing was unpacked: use the "
                        "official archive") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise UserError(f"{path} cannot be unpacked ({type(e).__name__}: {_one_line(e)}); delete it and "
                        "rerun to download it again") from None
    except OSError as e:  # a full disk, a read-only root
        raise UserError(f"cannot unpack {path} into {into}: {_one_line(e)}") from None
