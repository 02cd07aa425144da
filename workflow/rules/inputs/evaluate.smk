# The input and params functions of evaluate.smk's rules.

def training_label_sources(wildcards):
    """(label, folder) of what the evaluated train variant trained on (:func:`round_label_sources`)."""
    return round_label_sources(config["evaluate"][wildcards.variant]["predictions"])
