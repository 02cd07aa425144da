rule evaluate:
    input:
        index=index_csv(),
        predictions=upstream("evaluate", "predictions", f"{RESULTS}/predict/{{variant}}"),
        proposals=along("evaluate", ["predictions", "pseudolabels", "proposals"], f"{RESULTS}/proposals/{{variant}}/proposals.json"),
        saliency=along("evaluate", ["predictions", "pseudolabels", "proposals", "saliency"], f"{RESULTS}/saliency/{{variant}}"),
        features=along("evaluate", ["predictions", "features"], f"{RESULTS}/features/{{variant}}.zarr"),
    output:
        metrics=f"{RESULTS}/evaluate/{{variant}}/metrics.json",
        report=report(
            f"{RESULTS}/evaluate/{{variant}}/report.md",
            caption="../report/evaluate.rst",
            category="Evaluation",
            subcategory="{variant}",
        ),
        html=report(
            f"{RESULTS}/evaluate/{{variant}}/report.html",
            caption="../report/evaluate_html.rst",
            category="Evaluation",
            subcategory="{variant}",
        ),
    params:
        settings=variant_settings("evaluate"),
        chain=config_chain("evaluate"),
        root=lambda wildcards: DATASET_ROOT,
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
        metrics=expand(f"{RESULTS}/evaluate/{{variant}}/metrics.json", variant=list(config["evaluate"])),
    output:
        md=f"{RESULTS}/evaluate/comparison.md",
        html=report(
            f"{RESULTS}/evaluate/comparison.html",
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
