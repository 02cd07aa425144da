# One prediction folder per train variant, over every indexed image.
rule predict:
    input:
        index=index_csv(),
        model=f"{RESULTS}/train/{{variant}}/model.pt",
        features=upstream("train", "features", f"{RESULTS}/features/{{variant}}.zarr"),
    output:
        directory(f"{RESULTS}/predict/{{variant}}"),
    params:
        chain=config_chain("train"),
    threads: 4
    log:
        f"{LOGS}/predict/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/predict.py"
