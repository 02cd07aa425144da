"""Benchmark downloads for users who are online: archives fetched into ``resources/downloads/``, checked against
their published MD5 sums and unpacked into a folder the workflow owns (``resources/datasets/{name}``).

Offline, the same rule works from archives put into ``resources/downloads/`` by hand; the error says which files,
from where, and their sizes and MD5 sums. MD5 sums: torchvision's ``VOCSegmentation`` (VOC 2012) and the COCO
archives' published sums (as torchvision-style loaders and the COCO download scripts list them).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from unseg.core.io import atomic_output


@dataclass(frozen=True)
class Archive:
    """One archive of a benchmark: its file name, where it is published, its MD5 sum and its size."""

    file: str
    url: str
    md5: str
    size: str


_COCO_VAL = Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                    "442b8da7639aecaf257c1dceb8ba8c80", "778 MB")
_COCO_ANNOTATIONS = Archive("annotations_trainval2017.zip",
                            "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                            "f4bbac642086de4f52a3fdda2de5fa2c", "241 MB")
_COCO_TRAIN = Archive("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip",
                      "cced6f7f71b7629ddf16f17bbcfab6b2", "18 GB")

DOWNLOADS: dict[str, tuple[Archive, ...]] = {
    "voc2012": (Archive("VOCtrainval_11-May-2012.tar",
                        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                        "6cd6e144f989b92b3379bac3b3de84fd", "1.9 GB"),),
    "coco2017-val": (_COCO_VAL, _COCO_ANNOTATIONS),
    "coco2017": (_COCO_TRAIN, _COCO_VAL, _COCO_ANNOTATIONS),
}
"""``dataset.download`` name → its archives, unpacked in this order into one folder."""

FORMAT_OF: dict[str, str] = {"voc2012": "voc", "coco2017-val": "coco", "coco2017": "coco"}
"""The ``dataset.format`` that reads what each download unpacks."""

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """An archive could not be fetched or failed its checksum; the message says what to put where."""


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline_hint(archive: Archive, downloads_dir: Path) -> str:
    return (f"put {archive.file} ({archive.size}, MD5 {archive.md5}, from {archive.url}) into "
            f"{str(downloads_dir)!r} and re-run")


def fetch_archive(archive: Archive, downloads_dir: str | os.PathLike, offline: bool = False,
                  progress: bool = True) -> Path:
    """The archive's file in ``downloads_dir``, downloaded first unless it is there, and checked against its MD5.

    Raises:
        DownloadError: offline (or the download fails) and the file is not there; or its MD5 differs (the file is
            left in place, named in the message, for the user to delete or replace).
    """
    downloads_dir = Path(downloads_dir)
    path = downloads_dir / archive.file
    if not path.is_file():
        if offline:
            raise DownloadError(f"dataset.download: {archive.file} is not in {str(downloads_dir)!r} and downloads are "
                                f"off; {_offline_hint(archive, downloads_dir)}")
        try:
            with urllib.request.urlopen(archive.url, timeout=60) as response, atomic_output(path) as tmp:
                total = int(response.headers.get("Content-Length") or 0) or None
                with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=archive.file,
                                                  disable=not progress) as bar:
                    for block in iter(lambda: response.read(_CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError) as error:
            raise DownloadError(f"dataset.download: cannot download {archive.url} ({error}); offline, "
                                f"{_offline_hint(archive, downloads_dir)}") from error
    digest = file_md5(path)
    if digest != archive.md5:
        raise DownloadError(f"dataset.download: {str(path)!r} has MD5 {digest}, the published one is {archive.md5} "
                            "(an incomplete or different file): delete it to download it again, or replace it")
    return path


def unpack(archive_path: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Unpack a .tar (any compression) or .zip into ``destination``; members that would land outside it (absolute
    paths, ``..``, links out) are refused."""
    archive_path, destination = Path(archive_path), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive_path):
        root = destination.resolve()
        with zipfile.ZipFile(archive_path) as archive:
            for member in archive.namelist():
                target = (destination / member).resolve()
                if os.path.commonpath([root, target]) != str(root):
                    raise DownloadError(f"{str(archive_path)!r}: member {member!r} would unpack outside the folder")
            archive.extractall(destination)
    elif tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as archive:
            try:
                archive.extractall(destination, filter="data")
            except tarfile.FilterError as error:
                raise DownloadError(f"{str(archive_path)!r}: {error}") from error
    else:
        raise DownloadError(f"{str(archive_path)!r} is neither a tar nor a zip archive")


def download_dataset(kind: str, downloads_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     offline: bool | None = None, progress: bool = True) -> Path:
    """Fetch every archive of ``kind`` (:data:`DOWNLOADS`) and unpack them into ``out_dir``, atomically (the folder
    appears only once all are unpacked). ``offline`` None: offline when the environment says ``UNSEG_OFFLINE=1``.

    Returns ``out_dir``. Raises DownloadError (see :func:`fetch_archive`), KeyError for an unknown ``kind``.
    """
    if kind not in DOWNLOADS:
        raise KeyError(f"dataset.download: no download named {kind!r} (known: {sorted(DOWNLOADS)})")
    if offline is None:
        offline = os.environ.get("UNSEG_OFFLINE", "") == "1"
    archives = [fetch_archive(archive, downloads_dir, offline, progress) for archive in DOWNLOADS[kind]]
    with atomic_output(out_dir) as tmp:
        for path in archives:
            print(f"download: unpacking {path.name} into {out_dir}", file=sys.stderr)
            unpack(path, tmp)
    return Path(out_dir)
