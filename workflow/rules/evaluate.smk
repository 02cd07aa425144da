rule evaluate:
    input:
        index=index_csv(),
        predictions=upstream("evaluate", "predictions", f"{RESULTS}/predict/{{variant}}"),
        proposals=along("evaluate", ["predictions", "pseudolabels", "proposals"], f"{RESULTS}/proposals/{{variant}}/proposals.json"),
    output:
        metrics=f"{RESULTS}/evaluate/{{variant}}/metrics.json",
        report=report(
            f"{RESULTS}/evaluate/{{variant}}/report.md",
            caption="../report/evaluate.rst",
            category="Evaluation",
        ),
    params:
        settings=variant_settings("evaluate"),
        chain=config_chain("evaluate"),
        root=config["dataset"]["root"],
        num_classes=config["dataset"].get("num_classes"),
        class_names=config["dataset"].get("class_names"),
    log:
        f"{LOGS}/evaluate/{{variant}}.log",
    script:
        "../scripts/evaluate.py"
