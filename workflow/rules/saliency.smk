rule saliency:
    input:
        features=upstream("saliency", "features", f"{RESULTS}/features/{{variant}}.zarr"),
    output:
        directory(f"{RESULTS}/saliency/{{variant}}"),
    params:
        settings=variant_settings("saliency"),
        chain=config_chain("saliency"),
    threads: 8
    log:
        f"{LOGS}/saliency/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/saliency.py"
