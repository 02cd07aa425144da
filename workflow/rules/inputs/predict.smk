# The input and params functions of predict.smk's rules.

def final_model(wildcards):
    """Input function: the model of a train variant's last round."""
    return PATHS["model"].format(variant=wildcards.variant, round=config["train"][wildcards.variant]["rounds"])
