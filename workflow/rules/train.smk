rule train:
    input:
        index=PATHS["index"],
        pseudolabels=upstream("train", "pseudolabels", "pseudolabels"),
        features=upstream("train", "features", "features"),
    output:
        model=PATHS["model"],
        log_csv=PATHS["train_log"],
    params:
        settings=variant_settings("train"),
        chain=config_chain("train"),
        num_classes=lambda wildcards: config["pseudolabels"][config["train"][wildcards.variant]["pseudolabels"]]["clusters"] + 1,
    threads: 8
    log:
        f"{LOGS}/train/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/train.py"
