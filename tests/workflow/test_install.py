"""What the README's demo install (`pip install -e .`, no extras) brings must run every command the README shows."""

from __future__ import annotations

import importlib.metadata as metadata
import re

from packaging.requirements import Requirement

from workflow_helpers import snakemake


def install_closure(distribution: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Normalised names of ``distribution`` and everything its requirements pull in (markers evaluated for
    this interpreter and the requested extras only), from the installed metadata."""
    seen: set[str] = set()
    pending = [(distribution, extras)]
    while pending:
        name, wanted = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key, wanted) in seen:
            continue
        seen.add((key, wanted))
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return {key for key, _ in seen}


def test_default_install_brings_what_snakemake_report_needs():
    # `snakemake --report` stops with "Python package pygments must be installed" without it; the test extra's
    # pytest pulls pygments in, which hid the gap, so the check reads the dependency metadata, not the environment.
    default = install_closure("unseg")
    assert "pygments" in default
    assert "pytest" not in default  # the closure really is the default install's, not the test extra's
    assert "pytest" in install_closure("unseg", frozenset({"test"}))


def test_report_bundles_the_evaluation_and_every_page_of_every_audit_gallery(tiny_run):
    import zipfile

    workdir, config, _ = tiny_run
    snakemake(workdir, config, "--report", "report.zip")
    with zipfile.ZipFile(workdir / "report.zip") as bundle:
        names = bundle.namelist()
        report = bundle.read("report/report.html").decode()
    assert "Audit" in report and "Evaluation" in report
    audit = workdir / "results" / "tiny" / "audit"
    galleries = sorted(path.relative_to(audit) for path in audit.glob("*/*") if path.is_dir())
    assert len(galleries) >= 5, galleries
    # Snakemake puts each gallery folder under report/data/raw/{id}/: every page and panel, index.html first
    bundled: dict[str, list[str]] = {}
    for name in names:
        folder, _, file_name = name.rpartition("/")
        bundled.setdefault(folder, []).append(file_name)
    bundled_galleries = [sorted(files) for files in bundled.values() if "index.html" in files]
    for gallery in galleries:
        files = sorted(path.relative_to(audit / gallery).as_posix() for path in (audit / gallery).rglob("*")
                       if path.is_file() and path.name != ".snakemake_timestamp")
        assert "page-2.html" in files and any(name.endswith(".png") for name in files), gallery  # 2 pages each
        assert files in bundled_galleries, gallery
