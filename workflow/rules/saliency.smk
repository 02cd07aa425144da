rule saliency:
    input:
        features=upstream("saliency", "features", f"{RESULTS}/features/{{variant}}.zarr"),
    output:
        directory(f"{RESULTS}/saliency/{{variant}}"),
    params:
        settings=settings("saliency"),
        chain=chain("saliency"),
    log:
        f"{LOGS}/saliency/{{variant}}.log",
    script:
        "../scripts/saliency.py"
