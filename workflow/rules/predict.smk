# One prediction folder per train variant, over every indexed image.


include: "inputs/predict.smk"


rule predict:
    input:
        index=PATHS["index"],
        model=final_model,
        features=upstream("train", "features", "features"),
        weights=finetuned_weights(lambda wildcards: config["train"][wildcards.variant]["rounds"]),
    output:
        directory(PATHS["predict"]),
    params:
        chain=config_chain("train"),
    threads: 4
    log:
        f"{LOGS}/predict/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/predict.py"
