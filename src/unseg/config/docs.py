"""Documentation generated from the schemas: the methods of every stage (``unseg methods``) and the reference of every
config key (``config/README.md``, ``unseg config-docs``), from the descriptions in the base schema and in the methods'
declarations (:mod:`unseg.methods`). Imports no stage module (no torch).

A generated block inside a hand-written file (the README's list of methods) sits between ``<!-- {name}:start -->``
and ``<!-- {name}:end -->``: :func:`replace_marked_block` fills it in, and a test compares the file with the result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from unseg.config.registry import DATASET_FORMATS, REGISTRIES, Method, load_all

# The registries listed by ``unseg methods``, in pipeline order (dataset formats first).
METHOD_STAGES = ("dataset", "masks", "saliency", "contrast", "pseudolabels", "train", "instances")
BASE_SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


def registry_of(stage: str):
    """The registry of ``stage`` (``"dataset"``: the dataset formats)."""
    if stage == "dataset":
        return DATASET_FORMATS
    if stage not in REGISTRIES:
        raise KeyError(f"no stage {stage!r} takes methods (stages: {list(METHOD_STAGES)})")
    return REGISTRIES[stage]


def methods_of(stages: Iterable[str] = METHOD_STAGES, builtin_only: bool = False) -> list[Method]:
    """Every method of ``stages``, stage by stage, by name: the built-in ones and (unless ``builtin_only``) those
    the plugins imported so far registered."""
    load_all()
    methods = [registry_of(stage).get(name) for stage in stages for name in registry_of(stage).names()]
    return [method for method in methods if method.builtin or not builtin_only]


def type_of(prop: Mapping[str, Any]) -> str:
    """A JSON Schema property's type for a person: ``integer``, ``string | null``, ``one of: a, b``, ``array of
    number``."""
    if "const" in prop:
        return json.dumps(prop["const"])
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return "one of: " + ", ".join(str(value) for value in prop["enum"])
    for key in ("oneOf", "anyOf"):
        if key in prop:
            return " | ".join(type_of(option) for option in prop[key])
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(kind)
    if kind == "array" and isinstance(prop.get("items"), Mapping):
        return f"array of {type_of(prop['items'])}"
    return kind or "any"


# Words a full stop follows inside a sentence (Engstler et al. 2023, Eq. 8).
ABBREVIATIONS = ("al", "e.g", "i.e", "eq", "sec", "cf", "vs", "fig", "etc")


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to a full stop outside parentheses that ends no abbreviation and is
    followed by a space), for one-line listings."""
    text = " ".join(text.split())
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char == "." and text[index + 1:index + 2] in (" ", ""):
            word = text[:index].rsplit(" ", 1)[-1].lower().strip("(")
            if word not in ABBREVIATIONS:
                return text[:index + 1]
    return text


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(prop: Mapping[str, Any]) -> str:
    return f"`{json.dumps(prop['default'])}`" if "default" in prop else ""


def settings_rows(schema: Mapping[str, Any], required: Iterable[str] = ()) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of each setting in a method's schema (a required one says so)."""
    required = set(required)
    return [(name, type_of(prop), _default(prop) or ("required" if name in required else ""),
             prop.get("description", "")) for name, prop in schema.items()]


def describe_methods(stages: Iterable[str] = METHOD_STAGES, markdown: bool = False, brief: bool = False,
                     builtin_only: bool = False) -> str:
    """The methods of ``stages`` (:func:`methods_of`): each one's description, where its function lives and its
    settings (type, default, description); ``brief``: one line per method (stage, name, first sentence);
    ``markdown``: as Markdown."""
    methods = methods_of(stages, builtin_only)
    lines: list[str] = []
    if brief:
        if markdown:
            lines += ["| stage | method | what it does |", "|---|---|---|"]
            lines += [f"| {method.stage} | `{method.name}` | {_cell(first_sentence(method.description))} |"
                      for method in methods]
        else:
            width = max((len(method.name) for method in methods), default=0)
            lines += [f"{method.stage:<13}{method.name:<{width + 2}}{first_sentence(method.description)}"
                      for method in methods]
        return "\n".join(lines) + "\n"
    for method in methods:
        rows = settings_rows(method.schema, method.required)
        if markdown:
            lines += [f"### {method.stage}: `{method.name}`", "", " ".join(method.description.split()), "",
                      f"Function: `{method.location}`.", ""]
            if rows:
                lines += ["| setting | type | default | description |", "|---|---|---|---|"]
                lines += [f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(text)} |"
                          for name, kind, default, text in rows]
            else:
                lines.append("No settings of its own.")
            lines.append("")
        else:
            lines += [f"{method.stage} {method.name}  ({method.location})", f"  {' '.join(method.description.split())}"]
            lines += [f"    {name}: {kind}" + (f" = {default.strip('`')}" if default else "") +
                      (f"  {' '.join(text.split())}" if text else "") for name, kind, default, text in rows]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _property_rows(properties: Mapping[str, Any], prefix: str) -> list[str]:
    """Table rows of ``properties`` under the key ``prefix``; a nested object's keys follow it, a map of variants'
    keys follow as ``prefix.key.{variant}.*``."""
    rows = []
    for name, prop in properties.items():
        key = f"{prefix}{name}"
        nested = prop.get("properties")
        variants = prop.get("additionalProperties")
        kind = "variants" if isinstance(variants, Mapping) and "properties" in variants else type_of(prop)
        rows.append(f"| `{key}` | {_cell(kind)} | {_cell(_default(prop))} | {_cell(prop.get('description', ''))} |")
        if nested:
            rows += _property_rows(nested, f"{key}.")
        if kind == "variants":
            rows += _property_rows(variants["properties"], f"{key}.{{variant}}.")
    return rows


def config_reference(base_schema: str | Path | Mapping[str, Any] = BASE_SCHEMA) -> str:
    """``config/README.md``: every key a config can set, by section, with its type, default and description: the
    base schema's keys, then each dataset format's and each method's own settings."""
    schema = base_schema if isinstance(base_schema, Mapping) else yaml.safe_load(Path(base_schema).read_text())
    table = ["| key | type | default | description |", "|---|---|---|---|"]
    lines = ["# Configuration reference", "",
             "<!-- Generated by `unseg config-docs` from workflow/schemas/config.schema.yaml and the methods' "
             "declarations (src/unseg/methods/); do not edit by hand. -->", "",
             " ".join(schema.get("description", "").split()), "",
             "A section's `{variant}` is a name you choose (a path segment of its results); a method's own settings "
             "sit beside the settings every method of the stage shares. `unseg methods STAGE` lists the same from the "
             "command line.", ""]
    for section, prop in schema["properties"].items():
        lines += [f"## `{section}`", ""]
        if prop.get("description"):
            lines += [" ".join(prop["description"].split()), ""]
        rows = _property_rows({section: prop}, "")
        lines += table + (rows[1:] if len(rows) > 1 else rows) + [""]
        stage = "dataset" if section == "dataset" else section
        if stage == "dataset" or stage in REGISTRIES:
            key = "format" if stage == "dataset" else "method"
            for method in methods_of([stage], builtin_only=True):
                where = f"{section}." if stage == "dataset" else f"{section}.{{variant}}."
                lines += [f"### `{key}: {method.name}`", "", " ".join(method.description.split()), ""]
                rows = settings_rows(method.schema, method.required)
                if rows:
                    lines += table + [f"| `{where}{name}` | {_cell(kind)} | {_cell(default)} | {_cell(text)} |"
                                      for name, kind, default, text in rows] + [""]
                else:
                    lines += ["No settings of its own.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def replace_marked_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` replaced by
    ``content``.

    Raises:
        ValueError: the markers are missing (or out of order).
    """
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no block <!-- {name}:start --> ... <!-- {name}:end --> to fill in")
    return pattern.sub(lambda match: match.group(1) + content.rstrip("\n") + "\n" + match.group(2), text, count=1)


def update_marked_block(path: str | Path, name: str, content: str, check: bool = False) -> bool:
    """Fill in the ``name`` block of the file ``path`` with ``content`` (:func:`replace_marked_block`); with ``check``
    write nothing. Returns whether the file was (``check``: would be) changed."""
    path = Path(path)
    text = path.read_text()
    updated = replace_marked_block(text, name, content)
    if updated != text and not check:
        path.write_text(updated)
    return updated != text
