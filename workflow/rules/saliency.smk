include: "inputs/saliency.smk"


rule saliency:
    input:
        unpack(saliency_images),
        unpack(fused_inputs("saliency")),
        features=upstream("saliency", "features", "features"),
    output:
        directory(PATHS["saliency"]),
    params:
        settings=variant_settings("saliency"),
        chain=config_chain("saliency"),
        masks_listing=lambda wildcards: mask_folder_listing(config["saliency"][wildcards.variant]),
    threads: 8
    log:
        f"{LOGS}/saliency/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/saliency.py"

