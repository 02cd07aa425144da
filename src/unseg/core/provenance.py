"""Provenance sidecars: what made an artifact (resolved config chain, code version, input digests)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from unseg import __version__
from unseg.core.io import write_json


def file_digest(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def input_digest(path: str | Path) -> str:
    """A file's sha256, or for a folder the sha256 of its sorted (relative path, size, mtime-free) listing, without
    the folder's own ``provenance.json``."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    # The folder's own sidecar is about the folder, not part of it (and holds run times, which differ per run).
    listing = "\n".join(f"{p.relative_to(path)}\t{p.stat().st_size}" for p in sorted(path.rglob("*"))
                         if p.is_file() and p != path / "provenance.json")
    return "listing:" + hashlib.sha256(listing.encode()).hexdigest()


def folder_listing_digest(path: str | Path) -> str:
    """sha256 of the (name, size, mtime) of every PNG in ``path``: a params value that changes when a mask does, so
    that the workflow re-runs a ``mask_folder`` variant whose masks were edited."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.png")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def tree_listing_digest(*roots: str | Path) -> str:
    """sha256 of the listing of every file below ``roots`` (recursively; hidden files and folders left out, symbolic
    links to folders not followed): each file's path relative to its root, size and mtime (a symbolic link: those of
    its target, or ``broken``). A params value of the index: an image or ground-truth file added, removed, replaced
    or edited in place changes it, so the workflow re-indexes and re-runs what depends on the index. Nothing is read:
    one ``stat`` per file (about a second per 100,000 files on a local disk)."""
    digest = hashlib.sha256()
    for root in roots:
        root = Path(root)
        digest.update(f"root {root}\n".encode())
        for folder, folders, files in os.walk(root):
            folders[:] = sorted(name for name in folders if not name.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(folder) / name
                try:
                    stat = path.stat()
                    entry = f"{stat.st_size}:{stat.st_mtime_ns}"
                except OSError:  # a broken link or a loop: the index reports it
                    entry = "broken"
                digest.update(f"{path.relative_to(root)}:{entry}\n".encode())
    return digest.hexdigest()


def code_version() -> str:
    """The package version, plus the git commit of the checkout when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def _flatten_inputs(inputs: dict) -> dict[str, str]:
    """role → path, where a role holding a list of paths becomes role[0], role[1], ... (empty lists vanish)."""
    flat = {}
    for role, value in inputs.items():
        if isinstance(value, (str, Path)):
            flat[role] = str(value)
        else:
            flat.update({f"{role}[{i}]": str(item) for i, item in enumerate(value)})
    return flat


LIBRARIES = ("numpy", "scipy", "torch", "torchvision", "timm", "zarr", "pycocotools", "faiss-cpu", "pillow",
             "snakemake")


def environment() -> dict[str, Any]:
    """Python, platform, the versions of the libraries that compute the artifacts, and the torch device."""
    import importlib.metadata
    import platform

    import torch

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return {"python": platform.python_version(), "platform": platform.platform(), "libraries": versions,
            "device": device}


def sidecar_path(artifact: str | Path) -> Path:
    """Where an artifact's provenance sidecar is: inside a folder artifact, beside a file artifact."""
    artifact = Path(artifact)
    return artifact / "provenance.json" if artifact.is_dir() else Path(f"{artifact}.provenance.json")


def write_provenance(artifact: str | Path, stage: str, variant: str, config_chain: dict, inputs: dict,
                     run: Mapping[str, Any] | None = None) -> Path:
    """Write the provenance sidecar: ``{artifact}/provenance.json`` inside a folder artifact (a zarr store, a
    folder of PNGs), else ``{artifact}.provenance.json`` beside a file artifact.

    Args:
        config_chain: the resolved config of this variant and of its upstream variants, keyed by stage.
        inputs: input role → path (or list of paths); each is digested.
        run: facts of the job that made it (``wall_time_s``, ``threads``).
    """
    sidecar = sidecar_path(artifact)
    write_json(
        sidecar,
        {
            "stage": stage,
            "variant": variant,
            "config": config_chain,
            "code_version": code_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": dict(run or {}),
            "environment": environment(),
            "inputs": {
                role: {"path": str(path), "digest": input_digest(path)}
                for role, path in _flatten_inputs(inputs).items()
            },
        },
    )
    return sidecar


def _limit_threads(threads: int | None) -> None:
    if threads is not None:
        from unseg.core.threads import use_threads

        use_threads(threads)


@contextlib.contextmanager
def log_to(path: str | Path | None, threads: int | None = None) -> Iterator[None]:
    """Send stderr (progress bars, warnings, tracebacks) of a workflow job to its log file; with ``threads``, limit
    the job to that many compute threads (:func:`unseg.core.threads.use_threads`) and log the value."""
    if not path:
        _limit_threads(threads)
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle, contextlib.redirect_stderr(handle):
        try:
            _limit_threads(threads)
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=handle)
            raise
