# Learned pixel embeddings (MaskContrast): one job trains the variant's model on the saliency masks of its features
# variant's images and writes the embeddings of every image as a feature store, which any stage's `features:` can
# name (common.smk's `along` resolves a contrast variant to it).
rule contrast:
    input:
        index=PATHS["index"],
        features=upstream("contrast", "features", "features"),
        saliency=upstream("contrast", "saliency", "saliency"),
        weights=lambda wildcards: backbone_weights(config["contrast"][wildcards.variant]["features"]),
    output:
        embeddings=directory(PATHS["contrast_embeddings"]),
        model=PATHS["contrast_model"],
        log_csv=PATHS["contrast_log"],
    params:
        settings=variant_settings("contrast"),
        chain=config_chain("contrast"),
    threads: 8
    resources:
        gpu=lambda wildcards: 1 if "cuda" in str(config["contrast"][wildcards.variant].get("device") or "") else 0,
    log:
        f"{LOGS}/contrast/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/contrast.py"
