include: "inputs/evaluate.smk"


rule evaluate:
    input:
        index=PATHS["index"],
        truth=PATHS["index_truth"],
        predictions=upstream("evaluate", "predictions", "predict"),
        proposals=along("evaluate", ["predictions", "pseudolabels", "proposals"], "proposals"),
        saliency=along("evaluate", ["predictions", "pseudolabels", "proposals", "saliency"], "saliency"),
        features=along("evaluate", ["predictions", "features"], "features"),
        training_labels=lambda wildcards: [folder for _, folder in training_label_sources(wildcards)],
    output:
        metrics=PATHS["metrics"],
        report=report(
            PATHS["report_md"],
            caption="../report/evaluate.rst",
            category="Evaluation",
            subcategory="{variant}",
        ),
        html=report(
            PATHS["report_html"],
            caption="../report/evaluate_html.rst",
            category="Evaluation",
            subcategory="{variant}",
        ),
    params:
        settings=variant_settings("evaluate"),
        training_labels=lambda wildcards: [label for label, _ in training_label_sources(wildcards)],
        chain=config_chain("evaluate"),
        num_classes=config["dataset"].get("num_classes"),
        class_names=config["dataset"].get("class_names"),
    threads: 8
    log:
        f"{LOGS}/evaluate/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/evaluate.py"


rule compare:
    input:
        metrics=expand(PATHS["metrics"], variant=list(config["evaluate"])),
    output:
        md=PATHS["comparison_md"],
        html=report(
            PATHS["comparison_html"],
            caption="../report/compare.rst",
            category="Evaluation",
            subcategory="comparison",
        ),
    params:
        variants=list(config["evaluate"]),
    threads: 1
    log:
        f"{LOGS}/evaluate/comparison.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/compare.py"
