# Audit pages: HTML galleries of overlays for every intermediate mask.
rule audit_masks:
    input:
        index=PATHS["index"],
        truth=PATHS["index_truth"],
        masks=PATHS["masks"],
    output:
        report(
            directory(PATHS["audit_masks"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="masks",
        ),
    params:
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/masks/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_saliency:
    input:
        index=PATHS["index"],
        saliency=PATHS["saliency"],
    output:
        report(
            directory(PATHS["audit_saliency"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="saliency",
        ),
    params:
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/saliency/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_proposals:
    input:
        index=PATHS["index"],
        truth=PATHS["index_truth"],
        proposals=PATHS["proposals"],
        rejected=PATHS["proposals_rejected"],
        saliency=upstream("proposals", "saliency", "saliency"),
    output:
        report(
            directory(PATHS["audit_proposals"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="proposals",
        ),
    params:
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/proposals/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_pseudolabels:
    input:
        index=PATHS["index"],
        labels=PATHS["pseudolabels"],
    output:
        report(
            directory(PATHS["audit_pseudolabels"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="pseudolabels",
        ),
    params:
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/pseudolabels/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_predict:
    input:
        index=PATHS["index"],
        labels=PATHS["predict"],
        pseudolabels=upstream("train", "pseudolabels", "pseudolabels"),
        rounds=lambda wildcards: [folder for _, folder in round_label_sources(wildcards.variant)[1:]],
    output:
        report(
            directory(PATHS["audit_predict"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="predictions",
        ),
    params:
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/predict/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_compare:
    input:
        unpack(comparison_inputs),
    output:
        report(
            directory(PATHS["audit_compare"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="side by side",
        ),
    params:
        comparison=lambda wildcards: config["audit"]["compare"][wildcards.variant],
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/compare/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit_compare.py"


rule audit_instances:
    input:
        index=PATHS["index"],
        truth=PATHS["index_truth"],
        proposals=upstream("instances", "proposals", "proposals"),
        rounds=lambda wildcards: [PATHS["instances"].format(variant=wildcards.variant, round=r)
                                  for r in range(1, config["instances"][wildcards.variant]["rounds"] + 1)],
        instances=lambda wildcards: PATHS["instances"].format(variant=wildcards.variant,
                                                              round=config["instances"][wildcards.variant]["rounds"]),
    output:
        report(
            directory(PATHS["audit_instances"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="instances",
        ),
    params:
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/instances/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"
