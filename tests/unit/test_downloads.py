"""Benchmark downloads: archives checked against their MD5, unpacked atomically; offline, a message that says what to
put where. No test touches the network: the archives are built here and the table of downloads is patched."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import pytest

from unseg.data import downloads
from unseg.data.downloads import Archive, DownloadError, download_dataset, unpack


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_voc(tmp_path, monkeypatch):
    downloads_dir = tmp_path / "downloads"
    downloads_dir.mkdir()
    archive_path = downloads_dir / "VOCtrainval.tar"
    _tar(archive_path, {"VOCdevkit/VOC2012/JPEGImages/a.jpg": b"jpeg bytes",
                        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"a\n"})
    archive = Archive("VOCtrainval.tar", "http://127.0.0.1:9/VOCtrainval.tar", _md5(archive_path), "1 kB")
    monkeypatch.setitem(downloads.DOWNLOADS, "voc2012", (archive,))
    return downloads_dir, archive


def test_an_archive_in_downloads_is_checked_and_unpacked(tmp_path, fake_voc):
    downloads_dir, _ = fake_voc
    out = download_dataset("voc2012", downloads_dir, tmp_path / "datasets" / "voc12", offline=True, progress=False)
    assert (out / "VOCdevkit" / "VOC2012" / "JPEGImages" / "a.jpg").read_bytes() == b"jpeg bytes"
    assert [path.name for path in (tmp_path / "datasets").iterdir()] == ["voc12"]  # no temporary left


def test_a_wrong_checksum_names_the_file_and_unpacks_nothing(tmp_path, fake_voc):
    downloads_dir, archive = fake_voc
    (downloads_dir / archive.file).write_bytes(b"a truncated download")
    with pytest.raises(DownloadError, match=r"VOCtrainval.tar' has MD5 [0-9a-f]{32}, the published one is"):
        download_dataset("voc2012", downloads_dir, tmp_path / "out", offline=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_offline_without_the_archive_says_what_to_put_where(tmp_path, fake_voc):
    downloads_dir, archive = fake_voc
    (downloads_dir / archive.file).unlink()
    with pytest.raises(DownloadError, match=r"put VOCtrainval.tar \(1 kB, MD5 [0-9a-f]{32}, from http://127.0.0.1:9/"
                                            r"VOCtrainval.tar\) into .*downloads"):
        download_dataset("voc2012", downloads_dir, tmp_path / "out", offline=True, progress=False)
    # online but unreachable (port 9 refuses): the same hint
    with pytest.raises(DownloadError, match="cannot download http://127.0.0.1:9/VOCtrainval.tar .*put VOCtrainval.tar"):
        download_dataset("voc2012", downloads_dir, tmp_path / "out", offline=False, progress=False)


def test_members_that_would_escape_the_folder_are_refused(tmp_path):
    evil_tar = tmp_path / "evil.tar"
    _tar(evil_tar, {"../outside.txt": b"x"})
    with pytest.raises(DownloadError, match="outside"):
        unpack(evil_tar, tmp_path / "out")
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as archive:
        archive.writestr("../outside.txt", b"x")
    with pytest.raises(DownloadError, match="outside the folder"):
        unpack(evil_zip, tmp_path / "out2")
    assert not (tmp_path / "outside.txt").exists()


def test_the_published_checksums_are_the_known_ones():
    """The MD5 sums torchvision's VOCSegmentation and the COCO download scripts publish (a typo here would refuse
    every good download)."""
    sums = {archive.file: archive.md5 for archives in downloads.DOWNLOADS.values() for archive in archives}
    assert sums == {"VOCtrainval_11-May-2012.tar": "6cd6e144f989b92b3379bac3b3de84fd",
                    "val2017.zip": "442b8da7639aecaf257c1dceb8ba8c80",
                    "annotations_trainval2017.zip": "f4bbac642086de4f52a3fdda2de5fa2c",
                    "train2017.zip": "cced6f7f71b7629ddf16f17bbcfab6b2"}
