# The input and params functions of pseudolabels.smk's rules.

def candidate_encoder_weights(wildcards):
    """Input function: the backbone's weights file when the pseudo-labels encode masked crops with it."""
    settings = config["pseudolabels"][wildcards.variant]
    reads_backbone = settings.get("candidate_feature") == "masked_crop_cls" or settings["method"] == "transfgu"
    return backbone_weights(settings["features"]) if reads_backbone else []
