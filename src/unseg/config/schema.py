"""The pipeline's config: its JSON Schema and its validation.

The schema is the workflow's base schema (``workflow/schemas/config.schema.yaml``: the stages, their variants and
the settings every method of a stage shares) plus one ``if/then`` branch per registered method
(:mod:`unseg.config.registry`), so that each method's settings are validated and their defaults, stated once in the
method's registration, are filled in. A researcher's ``plugins`` are imported first, so their methods get branches
too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from unseg.config.registry import DATASET_FORMATS, REGISTRIES, facet_shape, load_all, load_plugins
from unseg.training.rounds import MERGE_KEYS


class ConfigError(ValueError):
    """A config that breaks the schema; the message names the offending key."""


def load_methods(plugins: Iterable[str] = (), base: str | Path = ".") -> None:
    """Load the built-in methods' declarations (:mod:`unseg.methods`: no stage module, no torch is imported) and
    register those of ``plugins``."""
    load_all()
    load_plugins(plugins, base)


def method_branch(method, key: str = "method") -> dict[str, Any]:
    """The ``if/then`` branch of one registered method: when ``key`` (``method``; a dataset's ``format``) names it,
    its settings' schema applies.

    A trainer's branch also checks the per-round overrides (``round_settings``) against its settings, without
    defaults: an override holds only what differs in that round.
    """
    properties = copy.deepcopy(dict(method.schema))
    then: dict[str, Any] = {"properties": properties, "required": list(method.required)}
    if method.stage in ("train", "instances"):
        overrides = {key: {k: v for k, v in prop.items() if k != "default"} for key, prop in method.schema.items()}
        properties["round_settings"] = {
            "additionalProperties": {"type": "object", "properties": overrides, "additionalProperties": False}}
    return {"if": {"properties": {key: {"const": method.name}}, "required": [key]}, "then": then}


def config_schema(base_schema: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The full config schema: ``base_schema`` (a path or a loaded dict) with every registered method's branch.

    In the base schema each stage with a registry describes its variants with ``properties`` (the settings all its
    methods share, ``method`` among them); the branches add the method-specific ones, and
    ``unevaluatedProperties: false`` rejects a key no branch knows.
    """
    if isinstance(base_schema, Mapping):
        schema = copy.deepcopy(dict(base_schema))
    else:
        schema = yaml.safe_load(Path(base_schema).read_text())
    for stage, registry in REGISTRIES.items():
        variant = schema["properties"][stage]["additionalProperties"]
        variant["properties"]["method"]["enum"] = registry.names()
        variant["allOf"] = [method_branch(method) for method in registry]
        if stage == "instances":  # round r's targets may merge with their own thresholds (CutLER: 0.7, then 0.65)
            merge = {key: {k: v for k, v in variant["properties"][key].items() if k != "default"} for key in MERGE_KEYS}
            for branch in variant["allOf"]:
                branch["then"]["properties"]["round_settings"]["additionalProperties"]["properties"].update(merge)
        variant.pop("additionalProperties", None)
        variant["unevaluatedProperties"] = False
    dataset = schema["properties"]["dataset"]
    dataset["properties"]["format"]["enum"] = DATASET_FORMATS.names()
    # The default format's branch applies when format is left out (its defaults are then filled in too).
    dataset["allOf"] = [method_branch(method, "format") for method in DATASET_FORMATS]
    for branch in dataset["allOf"]:
        if branch["if"]["properties"]["format"]["const"] == dataset["properties"]["format"]["default"]:
            branch["if"] = {"anyOf": [branch["if"], {"not": {"required": ["format"]}}]}
    dataset.pop("additionalProperties", None)
    dataset["unevaluatedProperties"] = False
    return schema


def _with_defaults(validator_class):
    """A validator class that fills in each missing property's ``default`` while it validates (jsonschema FAQ)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, Mapping) and "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def _key(error) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    return path or "config"


def validate_config(config: dict[str, Any], base_schema: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` in place against :func:`config_schema` and fill in every default; returns it.

    Raises:
        ConfigError: naming the first offending key (e.g. ``proposals.default.nms_iou: 2 is greater than ...``).
    """
    schema = config_schema(base_schema)
    # A key's own error (a bad value, an unknown method) before the variant's "unexpected keys", which follows from
    # it when a method's branch fails.
    errors = sorted(_with_defaults(Draft202012Validator)(schema).iter_errors(config),
                    key=lambda error: (error.validator == "unevaluatedProperties", list(map(str, error.absolute_path))))
    if errors:
        error = errors[0]
        # A method's own key is reported by unevaluatedProperties at the variant: say which keys the method takes.
        hint = ""
        if error.validator == "unevaluatedProperties" and len(error.absolute_path) == 2:
            stage, variant = error.absolute_path
            method = config.get(stage, {}).get(variant, {}).get("method")
            if stage in REGISTRIES and method in REGISTRIES[stage]:
                shared = sorted(schema["properties"][stage]["additionalProperties"]["properties"])
                own = sorted(REGISTRIES[stage].get(method).schema)
                hint = f" (method {method!r} takes {own}; every {stage} method takes {shared})"
        if error.validator == "unevaluatedProperties" and list(error.absolute_path) == ["dataset"]:
            fmt = config["dataset"].get("format", "auto")
            if fmt in DATASET_FORMATS:
                hint = f" (format {fmt!r} takes {sorted(DATASET_FORMATS.get(fmt).schema)})"
        raise ConfigError(f"{_key(error)}: {error.message}{hint}")
    check_facets(config)
    return config


def check_facets(config: Mapping[str, Any]) -> None:
    """Raise a ConfigError naming ``{stage}.{variant}.facet`` when a variant's method reads the store facet its
    config names as another shape than that facet has (a method of ``(h, w, D)`` token grids given ``attn``)."""
    for stage, registry in REGISTRIES.items():
        for variant, settings in (config.get(stage) or {}).items():
            method = registry.get(settings["method"])
            if not method.reads or method.reads["facet"] not in settings:
                continue
            facet = settings[method.reads["facet"]]
            shape = facet_shape(str(facet))
            if shape is not None and shape != method.reads["shape"]:
                raise ConfigError(f"{stage}.{variant}.{method.reads['facet']}: {stage} method {method.name!r} reads "
                                  f"a {method.reads['shape']} facet, and {facet!r} is {shape} per image; name a "
                                  "facet of that shape (keys, queries, values, tokens, embeddings)")


def variant_settings(stage: str, settings: Mapping[str, Any], base_schema: str | Path | Mapping[str, Any]) -> dict:
    """One variant's settings with the schema's defaults filled in, for calling a stage runner from Python.

    The upstream references a config needs (``features``, ``proposals``, ...) are not needed here: the runner is
    given its inputs' paths, so missing ones are validated as placeholders and left out of the result.
    """
    from unseg.config.variants import LIST_UPSTREAM, UPSTREAM

    placeholders = {key: "-" for key in UPSTREAM.get(stage, {})
                    if key not in settings and key not in LIST_UPSTREAM.get(stage, ())}
    config = {"dataset": {"name": "python", "root": "."}, stage: {"variant": {**settings, **placeholders}}}
    completed = validate_config(config, base_schema)[stage]["variant"]
    return {key: value for key, value in completed.items() if key not in placeholders}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The config in the YAML file ``path``.

    Raises:
        ConfigError: the file is missing, not YAML (naming ``file:line:column`` and what the parser expected: the
            workflow's own message names neither), or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} that starts at line {context_mark.line + 1}, column {context_mark.column + 1})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config is a mapping of sections (dataset:, features:, ...), not "
                          f"{type(config).__name__}")
    return config


def check_config_file(path: str | Path, base_schema: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """What the workflow checks of a config before any job, without Snakemake: the YAML (:func:`read_config_file`),
    the plugins it names, the schema with every method's settings (:func:`validate_config`), and the variants'
    references to each other; returns the config with its defaults filled in.

    Raises:
        ConfigError: naming the file and line (YAML) or the key.
    """
    from unseg.config.variants import VariantError, check_variants, dataset_root

    path = Path(path)
    config = read_config_file(path)
    try:
        load_methods(config.get("plugins", []), base=path.parent)
    except ImportError as error:
        raise ConfigError(f"{path}: plugins: {error}") from None
    try:
        validate_config(config, base_schema)
        check_variants(config)
        dataset_root(config["dataset"])
    except (ConfigError, VariantError) as error:
        raise ConfigError(f"{path}: {error}") from None
    return config
