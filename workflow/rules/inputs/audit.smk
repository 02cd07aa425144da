# The input and params functions of audit.smk's rules.

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



def predict_round_labels(wildcards):
    """Input function of a train variant's audit page: the labels of its rounds after the first."""
    return [folder for _, folder in round_label_sources(wildcards.variant)[1:]]


def instances_round_detections(wildcards):
    """Input function of an instances variant's audit page: every round's detections."""
    return [PATHS["instances"].format(variant=wildcards.variant, round=r)
            for r in range(1, config["instances"][wildcards.variant]["rounds"] + 1)]


def instances_last_detections(wildcards):
    """Input function of an instances variant's audit page: its last round's detections."""
    return PATHS["instances"].format(variant=wildcards.variant, round=config["instances"][wildcards.variant]["rounds"])
