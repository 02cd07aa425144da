rule masks:
    input:
        unpack(fused_inputs("masks")),
        index=PATHS["index"],
        features=upstream("masks", "features", "features"),
    output:
        PATHS["masks"],
    params:
        settings=variant_settings("masks"),
        chain=config_chain("masks"),
    threads: 8
    log:
        f"{LOGS}/masks/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/masks.py"
