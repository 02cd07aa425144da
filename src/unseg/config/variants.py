"""Stage variants: each stage's config names variants, and each variant names the upstream variants it consumes.

The variant name is a path segment (``results/{dataset}/{stage}/{variant}``), so two choices run side by side and
editing one variant re-runs only that stage and what depends on it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unseg.config.registry import REGISTRIES

# stage → {config key in a variant → upstream stage it names}
UPSTREAM: dict[str, dict[str, str]] = {
    "features": {},
    "masks": {"features": "features"},
    "saliency": {"features": "features"},
    "contrast": {"features": "features", "saliency": "saliency"},
    "proposals": {"masks": "masks", "saliency": "saliency", "components": "saliency", "votes": "masks"},
    "instances": {"proposals": "proposals", "features": "features"},
    "pseudolabels": {"proposals": "proposals", "features": "features", "crops": "features"},
    "train": {"pseudolabels": "pseudolabels", "features": "features"},
    "evaluate": {"predictions": "train"},
}
# References a variant may leave out: a pseudolabels method that clusters crops (transfgu) labels no proposals, and
# only such a method reads crops; a proposals variant adds saliency components only when it names their map.
OPTIONAL_UPSTREAM: dict[str, tuple[str, ...]] = {"pseudolabels": ("proposals", "crops"),
                                                  "proposals": ("components", "votes")}
# References that name a list of variants: a proposals variant's masks variants voting with its masks (VoteCut).
LIST_UPSTREAM: dict[str, tuple[str, ...]] = {"proposals": ("votes",)}
# A reference to a features variant may name a contrast variant instead: its store of learned embeddings is read as
# any features variant's is. A pseudolabels variant's proposals may be an instances variant's detections (its last
# round's instances.json, MaskDistill's hand-off from Mask R-CNN to the semantic path).
FEATURE_SOURCES = ("features", "contrast")
PROPOSAL_SOURCES = ("proposals", "instances")
# Where a reference to ``key`` may point: the stage of that name, or (key → these) its stand-ins.
SOURCES = {"features": FEATURE_SOURCES, "proposals": PROPOSAL_SOURCES}
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class VariantError(ValueError):
    """A config names a variant that does not exist, or a variant name that cannot be a path segment."""


# Folders the workflow writes into; everything else (a dataset root above all) is the user's and only ever read.
OWNED_FOLDERS = ("results", "resources", "logs")


def generated_dataset_root(name: str) -> str:
    """Where the workflow generates a synthetic dataset called ``name`` (a folder it owns)."""
    return f"resources/datasets/{name}"


DATASET_SOURCES = ("root", "generate", "download")


def dataset_root(dataset: dict) -> str:
    """The folder the ``dataset`` config section reads: ``root`` as given, or the folder the workflow generates
    (``generate``) or downloads (``download``) the dataset into.

    Raises VariantError when not exactly one of ``root``, ``generate`` and ``download`` is given, or when a
    download's layout is not the one ``format`` reads.
    """
    given = [key for key in DATASET_SOURCES if key in dataset]
    if len(given) != 1:
        said = f"{' and '.join(given)} were given" if given else "none was given"
        raise VariantError(
            "dataset: give one of 'root' (your folder, only ever read), 'generate' (a synthetic dataset) or "
            f"'download' (a benchmark's archives), the last two written to "
            f"{generated_dataset_root(dataset.get('name', '{name}'))}; {said}"
        )
    if "download" in dataset:
        from unseg.data.downloads import FORMAT_OF

        expected = FORMAT_OF[dataset["download"]]
        if dataset.get("format", "auto") != expected:
            raise VariantError(f"dataset.download: {dataset['download']} unpacks the {expected!r} layout; set "
                               f"dataset.format: {expected}")
    return dataset["root"] if "root" in dataset else generated_dataset_root(dataset["name"])


def is_owned_path(path: str) -> bool:
    """True for a relative path inside one of :data:`OWNED_FOLDERS` (no ``..`` escaping it)."""
    parts = Path(os.path.normpath(path)).parts
    return not Path(path).is_absolute() and len(parts) > 1 and parts[0] in OWNED_FOLDERS


def stage_of(config: dict, upstream: str, variant: str) -> str:
    """The stage whose variant ``variant`` a reference to ``upstream`` reaches: ``"contrast"`` for a features
    reference naming a contrast variant, ``"instances"`` for a proposals reference naming an instances variant,
    else ``upstream``."""
    for stand_in in SOURCES.get(upstream, (upstream,))[1:]:
        if variant not in (config.get(upstream) or {}) and variant in (config.get(stand_in) or {}):
            return stand_in
    return upstream


def check_variants(config: dict) -> None:
    """Check every variant name and every upstream reference; the message names the offending config key."""
    shared = sorted(set(config.get("features") or {}) & set(config.get("contrast") or {}))
    if shared:
        raise VariantError(f"contrast.{shared[0]}: a features variant has that name too; both name a feature store "
                           "(features: ...), so they need different names")
    shared = sorted(set(config.get("proposals") or {}) & set(config.get("instances") or {}))
    if shared:
        raise VariantError(f"instances.{shared[0]}: a proposals variant has that name too; a pseudolabels variant's "
                           "proposals key can name either, so they need different names")
    for stage, references in UPSTREAM.items():
        for variant, settings in (config.get(stage) or {}).items():
            if not VARIANT_NAME.match(str(variant)):
                raise VariantError(f"{stage}.{variant}: a variant name must match {VARIANT_NAME.pattern}")
            for key, upstream in references.items():
                if key not in settings and key in OPTIONAL_UPSTREAM.get(stage, ()):
                    continue
                if key not in settings:
                    raise VariantError(f"{stage}.{variant}.{key}: missing (name a variant of '{upstream}')")
                if upstream == "features" and stage != "contrast":
                    sources = FEATURE_SOURCES
                elif upstream == "proposals" and stage == "pseudolabels":
                    sources = PROPOSAL_SOURCES
                else:
                    sources = (upstream,)
                known = sorted(name for source in sources for name in (config.get(source) or {}))
                named = settings[key] if key in LIST_UPSTREAM.get(stage, ()) else [settings[key]]
                for name in named:
                    if name not in known:
                        what = " or ".join(f"'{source}'" for source in sources)
                        raise VariantError(
                            f"{stage}.{variant}.{key}: no {what} variant named {name!r} (known: {known})"
                        )
    for variant, settings in (config.get("proposals") or {}).items():
        if settings.get("masks") in settings.get("votes", []):
            raise VariantError(f"proposals.{variant}.votes: names its own masks variant {settings['masks']!r}, which "
                               "votes already; list the other feature sets' masks variants")
        if settings.get("score") == "salient_votes" and not settings.get("votes"):
            raise VariantError(f"proposals.{variant}.score: salient_votes ranks voted masks; name the masks variants "
                               f"to vote with in proposals.{variant}.votes")
    check_comparisons(config)
    resolve_facets(config)


# features.{variant}.facets: consumers stores exactly the facets the config's variants read (resolve_facets).
CONSUMER_FACETS = "consumers"


def facet_readers(config: dict) -> dict[str, dict[str, list[str]]]:
    """What every feature store is read for: features variant → facet → the config keys of the variants reading it
    (``"masks.default.facet"``). A variant reads its ``facet`` from the store its ``features`` names; an instances
    variant rescoring by coherence also its ``rescore_facet``; TransFGU's object mode the ``attn`` foreground prior
    and no ``facet``; contrast learns on ``tokens``; an evaluate variant with k-means, a probe or retrieval reads its
    ``facet`` of its predictions' store. Stores named by a contrast variant (embeddings) and the crop stores a
    pseudolabels ``crops`` key names are not feature stores of this kind and are left out.

    Reads a validated config (the schema's defaults filled in): a setting left out is not read."""
    readers: dict[str, dict[str, list[str]]] = {}

    def read(features_variant: str | None, facet: str | None, key: str) -> None:
        if facet is not None and features_variant in (config.get("features") or {}):
            readers.setdefault(features_variant, {}).setdefault(facet, []).append(key)

    for stage in ("masks", "saliency", "train", "instances"):
        for variant, settings in (config.get(stage) or {}).items():
            read(settings.get("features"), settings.get("facet"), f"{stage}.{variant}.facet")
            if stage == "instances" and settings.get("rescore") == "coherence":
                read(settings.get("features"), settings.get("rescore_facet"), f"instances.{variant}.rescore_facet")
    for variant, settings in (config.get("pseudolabels") or {}).items():
        if settings.get("method") != "transfgu":
            read(settings.get("features"), settings.get("facet"), f"pseudolabels.{variant}.facet")
        elif settings.get("mode") == "object":
            read(settings.get("features"), "attn", f"pseudolabels.{variant}.mode")
    for variant, settings in (config.get("contrast") or {}).items():
        read(settings.get("features"), "tokens", f"contrast.{variant}.features")
    for variant, settings in (config.get("evaluate") or {}).items():
        if any(settings.get(key) for key in ("kmeans", "linear_probe", "retrieval")):
            train = (config.get("train") or {}).get(settings.get("predictions"), {})
            read(train.get("features"), settings.get("facet"), f"evaluate.{variant}.facet")
    return readers


def resolve_facets(config: dict) -> None:
    """Give every features variant with ``facets: consumers`` the facets its readers read (in place, so the rule's
    params, the store and its resume key carry the list), then check that every facet a variant reads is one its
    store keeps. Raises VariantError naming the config key."""
    readers = facet_readers(config)
    for variant, settings in (config.get("features") or {}).items():
        if settings.get("crops") is not None:
            if settings.get("fused"):
                raise VariantError(f"features.{variant}.fused: a crops variant stores crop CLS tokens, which no masks "
                                   "or saliency method reads; leave fused off")
            continue
        read = readers.get(variant, {})
        if settings.get("facets") == CONSUMER_FACETS:
            if not read:
                raise VariantError(f"features.{variant}.facets: {CONSUMER_FACETS}, but no variant reads this store; "
                                   "list the facets to store")
        # a fused variant's masks and saliency read their facets in its own jobs (computed there, not stored)
        in_job = fused_reader_keys(config, variant)
        read = {facet: [key for key in keys if key not in in_job] for facet, keys in read.items()}
        read = {facet: keys for facet, keys in read.items() if keys}
        if settings.get("facets") == CONSUMER_FACETS:
            settings["facets"] = sorted(read)
        for facet, keys in read.items():
            if "facets" in settings and facet not in settings["facets"]:
                raise VariantError(f"{keys[0]}: reads facet {facet!r} of features.{variant}, which stores "
                                   f"{settings['facets']}; add it to features.{variant}.facets (or set facets: "
                                   f"{CONSUMER_FACETS})")


# The config section whose variants a side-by-side audit page (audit.compare) of each stage compares.
COMPARED_SECTION = {"masks": "masks", "saliency": "saliency", "proposals": "proposals", "pseudolabels": "pseudolabels",
                    "predict": "train"}


def check_comparisons(config: dict) -> None:
    """Check every side-by-side audit page (``audit.compare``): its name, and that its variants exist."""
    for name, comparison in ((config.get("audit") or {}).get("compare") or {}).items():
        if not VARIANT_NAME.match(str(name)):
            raise VariantError(f"audit.compare.{name}: a page name must match {VARIANT_NAME.pattern}")
        section = COMPARED_SECTION[comparison["stage"]]
        known = sorted(config.get(section) or {})
        for variant in comparison["variants"]:
            if variant not in known:
                raise VariantError(f"audit.compare.{name}.variants: no {section!r} variant named {variant!r} "
                                   f"(known: {known})")


def resolve_chain(config: dict, stage: str, variant: str) -> dict[str, dict[str, dict]]:
    """The resolved config of a variant and of all its upstream variants: {stage: {variant: settings}}."""
    chain: dict[str, dict[str, dict]] = {}
    pending = [(stage, variant)]
    while pending:
        current_stage, current_variant = pending.pop()
        settings = config[current_stage][current_variant]
        chain.setdefault(current_stage, {})[current_variant] = settings
        for key, upstream in UPSTREAM[current_stage].items():
            if key not in settings:  # an optional reference left out
                continue
            named = settings[key] if key in LIST_UPSTREAM.get(current_stage, ()) else [settings[key]]
            pending.extend((stage_of(config, upstream, name), name) for name in named)
    chain["dataset"] = {config["dataset"]["name"]: config["dataset"]}
    return chain


def follow(config: dict, stage: str, variant: str, *keys: str) -> str | None:
    """Follow upstream references: ``follow(cfg, "evaluate", "val", "predictions", "pseudolabels", "proposals")``
    returns the proposals variant behind evaluate variant ``val``; None where the chain passes an optional reference
    (``OPTIONAL_UPSTREAM``) that was left out."""
    for key in keys:
        if key in LIST_UPSTREAM.get(stage, ()):
            raise ValueError(f"{stage}.{variant}.{key} names a list of variants; read it from the config")
        if stage == "instances" and key not in UPSTREAM["instances"]:  # e.g. saliency: that of its proposals
            stage, variant = "proposals", config["instances"][variant]["proposals"]
        if key not in config[stage][variant] and key in OPTIONAL_UPSTREAM.get(stage, ()):
            return None
        variant = config[stage][variant][key]
        stage = stage_of(config, UPSTREAM[stage][key], variant)
    return variant


# The fused path (unseg.features.fused): which masks and saliency variants a fused features variant's jobs compute.
def fusable_saliency(settings: Mapping[str, Any]) -> bool:
    """Whether a saliency variant can run inside the feature jobs: a per-image method of the tokens (a head trained
    across the dataset needs every image first; masks read from a folder need no features)."""
    attributes = REGISTRIES["saliency"].get(settings["method"]).attributes
    return not attributes.get("dataset_level") and not attributes.get("pixel_maps")


def fused_variants(config: Mapping[str, Any], features_variant: str) -> dict[str, dict[str, Any]]:
    """The masks and saliency variants that a fused features variant computes: {"masks": {name: settings},
    "saliency": {name: settings}} (empty when the variant is not fused)."""
    if not config["features"].get(features_variant, {}).get("fused"):
        return {"masks": {}, "saliency": {}}
    return {
        "masks": {name: dict(settings) for name, settings in config.get("masks", {}).items()
                  if settings["features"] == features_variant},
        "saliency": {name: dict(settings) for name, settings in config.get("saliency", {}).items()
                     if settings["features"] == features_variant and fusable_saliency(settings)},
    }


def fused_reader_keys(config: Mapping[str, Any], features_variant: str) -> set[str]:
    """The config keys (``"masks.multik.facet"``) of the variants computed in a fused variant's jobs: their facets
    need not be stored (:func:`unseg.config.variants.resolve_facets`)."""
    variants = fused_variants(config, features_variant)
    return {f"{stage}.{name}.facet" for stage in ("masks", "saliency") for name in variants[stage]}


def fused_reader(config: Mapping[str, Any], stage: str, variant: str) -> str | None:
    """The fused features variant that computes this masks or saliency variant, or None (the stage runs itself)."""
    features = config[stage][variant]["features"]
    return features if variant in fused_variants(config, features)[stage] else None
