rule masks:
    input:
        index=index_csv(),
        features=upstream("masks", "features", f"{RESULTS}/features/{{variant}}.zarr"),
    output:
        f"{RESULTS}/masks/{{variant}}/masks.json",
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
