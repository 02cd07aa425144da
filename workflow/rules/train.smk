rule train:
    input:
        index=index_csv(),
        pseudolabels=upstream("train", "pseudolabels", f"{RESULTS}/pseudolabels/{{variant}}"),
        features=upstream("train", "features", f"{RESULTS}/features/{{variant}}.zarr"),
    output:
        model=f"{RESULTS}/train/{{variant}}/model.pt",
        log_csv=f"{RESULTS}/train/{{variant}}/log.csv",
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
