"""The ``unseg`` command: quick looks at artifacts without a browser.

    unseg provenance results/voc/masks/multik/masks.json      what made this artifact, upstream to the dataset
    unseg provenance results/voc/features/dinov2-s14.zarr --json
    unseg trail 2007_000129 --results results/voc            every stage's artifact of one image, in one PNG
    unseg methods [STAGE] [--markdown] [--brief]             every method, its settings and where it lives
    unseg methods --markdown --brief --into README.md        fill in the file's <!-- methods:start/end --> block
    unseg config-docs [--check]                              regenerate (or check) config/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unseg.config.variants import UPSTREAM
from unseg.core.io import read_json
from unseg.core.provenance import sidecar_path

# Upstream first: the order a reader follows a chain in.
STAGE_ORDER = ("dataset", *UPSTREAM)


def _settings(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value, default=str)}" for key, value in settings.items())


def find_provenance(path: str | Path) -> Path:
    """The sidecar of an artifact (a file or a folder), or the sidecar itself.

    Raises:
        FileNotFoundError: naming the artifact and where its sidecar would be.
    """
    path = Path(path)
    if path.name.endswith("provenance.json") and path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"no artifact {str(path)!r}")
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no provenance sidecar (looked for {str(sidecar)!r}); the "
                                "workflow writes one beside every stage artifact")
    return sidecar


def describe_provenance(record: Mapping[str, Any], artifact: str) -> list[str]:
    """Lines for a person: what made the artifact, on what, and from which upstream variants."""
    run, environment = record.get("run", {}), record.get("environment", {})
    lines = [artifact, f"  made by    stage {record['stage']}, variant {record['variant']}, "
                       f"on {record.get('created')}, code {record.get('code_version')}"]
    if run or environment:
        facts = [f"{run['wall_time_s']:.1f} s" if "wall_time_s" in run else None,
                 f"{run['threads']} threads" if "threads" in run else None, environment.get("device")]
        lines.append("  ran        " + ", ".join(fact for fact in facts if fact))
    if environment:
        libraries = ", ".join(f"{name} {version}" for name, version in environment.get("libraries", {}).items())
        lines.append(f"  software   python {environment.get('python')}; {libraries}")
    lines.append("  config     (upstream first)")
    chain = record.get("config", {})
    for stage in [*[s for s in STAGE_ORDER if s in chain], *[s for s in chain if s not in STAGE_ORDER]]:
        for variant, settings in chain[stage].items():
            lines.append(f"    {stage:<13}{variant}: {_settings(settings)}")
    lines.append("  inputs")
    for role, entry in record.get("inputs", {}).items():
        lines.append(f"    {role:<13}{entry['path']}  {entry['digest']}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unseg", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    provenance = commands.add_parser("provenance", help="print what made an artifact (its provenance sidecar)")
    provenance.add_argument("path", help="an artifact (file or folder) under results/, or its sidecar")
    provenance.add_argument("--json", action="store_true", help="print the sidecar as JSON")
    trail = commands.add_parser("trail", help="render every stage's artifact of one image into one PNG")
    trail.add_argument("image", help="the image's name (its file stem, as in results/{dataset}/index/images.csv)")
    trail.add_argument("--results", required=True, help="the run's results/{dataset} folder")
    trail.add_argument("--out", help="the PNG to write (default: trail-{image}.png in the current folder)")
    methods = commands.add_parser("methods", help="list every method of every stage (or of STAGE) with its settings")
    methods.add_argument("stage", nargs="?", help="one stage: dataset (its formats), masks, saliency, contrast, "
                                                  "pseudolabels, train, instances")
    methods.add_argument("--markdown", action="store_true", help="print Markdown")
    methods.add_argument("--brief", action="store_true", help="one line per method: stage, name, what it does")
    methods.add_argument("--into", metavar="FILE", help="write the listing into FILE's <!-- methods:start --> ... "
                                                        "<!-- methods:end --> block instead of printing it")
    methods.add_argument("--plugins", nargs="*", default=[], help="your plugin modules or .py files, listed too")
    config_docs = commands.add_parser("config-docs", help="write config/README.md: every config key, by stage")
    config_docs.add_argument("--out", default=None, help="the file to write (default: the repository's "
                                                         "config/README.md)")
    config_docs.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file is stale")
    check = commands.add_parser("check", help="validate a config file as the workflow would, naming the file and "
                                               "line of a YAML error or the key of a bad setting")
    check.add_argument("config", help="the config file (YAML)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "trail":
        return _trail(args)
    if args.command == "methods":
        return _methods(args)
    if args.command == "config-docs":
        return _config_docs(args)
    try:
        sidecar = find_provenance(args.path)
    except FileNotFoundError as error:
        print(f"unseg: {error}", file=sys.stderr)
        return 2
    record = read_json(sidecar)
    text = json.dumps(record, indent=1) if args.json else "\n".join(describe_provenance(record, args.path))
    try:
        print(text)
    except BrokenPipeError:  # `unseg provenance X | head`: the reader had enough
        sys.stdout = open(os.devnull, "w")
    return 0


def _check(args: argparse.Namespace) -> int:
    from unseg.config.docs import BASE_SCHEMA
    from unseg.config.schema import ConfigError, check_config_file

    try:
        config = check_config_file(args.config, BASE_SCHEMA)
    except ConfigError as error:
        print(f"unseg: {error}", file=sys.stderr)
        return 1
    stages = [stage for stage, variants in config.items() if isinstance(variants, dict) and stage != "dataset"
              and variants and all(isinstance(settings, dict) for settings in variants.values())]
    print(f"{args.config}: valid; dataset {config['dataset']['name']!r}, "
          + ", ".join(f"{len(config[stage])} {stage}" for stage in stages))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from unseg.config.docs import METHOD_STAGES, describe_methods, update_marked_block
    from unseg.config.registry import load_plugins

    if args.stage is not None and args.stage not in METHOD_STAGES:
        print(f"unseg: no stage {args.stage!r} takes methods (stages: {', '.join(METHOD_STAGES)})", file=sys.stderr)
        return 2
    load_plugins(args.plugins)
    text = describe_methods([args.stage] if args.stage else METHOD_STAGES, args.markdown, args.brief)
    if args.into:  # the README's block lists the project's methods
        text = describe_methods(METHOD_STAGES, args.markdown, args.brief, builtin_only=True)
        changed = update_marked_block(args.into, "methods", text)
        print(f"{args.into}: {'updated' if changed else 'already current'}")
        return 0
    print(text, end="")
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    from unseg.config.docs import BASE_SCHEMA, config_reference

    out = Path(args.out) if args.out else BASE_SCHEMA.parents[2] / "config" / "README.md"
    text = config_reference()
    current = out.read_text() if out.is_file() else None
    if args.check:
        if current != text:
            print(f"unseg: {out} is stale; run `unseg config-docs`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        out.write_text(text)
    print(f"{out}: {'written' if current != text else 'already current'}")
    return 0


def _trail(args: argparse.Namespace) -> int:
    from unseg.reports.trail import render_trail, trail_panels

    try:
        panels = trail_panels(args.results, args.image)
    except (FileNotFoundError, KeyError) as error:
        print(f"unseg: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    out = render_trail(panels, args.out or f"trail-{args.image}.png")
    print(f"{out}: {len(panels)} panels ({', '.join(panel.caption for panel in panels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
