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


def test_report_bundles_the_evaluation_and_audit_pages(tiny_run):
    workdir, config, _ = tiny_run
    snakemake(workdir, config, "--report", "report.html")
    report = (workdir / "report.html").read_text()
    assert "Audit" in report and "Evaluation" in report
