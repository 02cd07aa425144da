# The input and params functions of instances.smk's rules and its parse-time checks of the config.

from unseg.methods.instances import reads_images as instance_training_reads_images
from unseg.training.rounds import check_round_chain, merge_settings_of_round, settings_of_round


for _variant, _settings in config["instances"].items():
    try:
        check_round_chain(_settings, _variant, "instances")
    except ValueError as error:
        raise WorkflowError(f"config error: {error}")
    if _settings["crf"]:
        require_crf(f"instances.{_variant}.crf: refining the detections needs a dense CRF, and {INSTALL_HINT}; "
                    "or set crf: false")


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
        **merge_settings_of_round(settings, round_index)}
    return resolved


def instances_merge_settings(wildcards):
    """Params function: how round r's targets merge round r-1's detections with the proposals (the variant's
    merge settings with round r's round_settings override)."""
    return merge_settings_of_round(config["instances"][wildcards.variant], int(wildcards.round))


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
