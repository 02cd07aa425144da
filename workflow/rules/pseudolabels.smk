include: "inputs/pseudolabels.smk"


rule pseudolabels:
    input:
        index=PATHS["index"],
        proposals=upstream("pseudolabels", "proposals", "proposals"),
        features=upstream("pseudolabels", "features", "features"),
        saliency=along("pseudolabels", ["proposals", "saliency"], "saliency"),
        crops=upstream("pseudolabels", "crops", "features"),
        weights=candidate_encoder_weights,
    output:
        directory(PATHS["pseudolabels"]),
    params:
        settings=variant_settings("pseudolabels"),
        chain=config_chain("pseudolabels"),
    threads: 8
    log:
        f"{LOGS}/pseudolabels/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/pseudolabels.py"
