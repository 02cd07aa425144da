rule pseudolabels:
    input:
        index=index_csv(),
        proposals=upstream("pseudolabels", "proposals", f"{RESULTS}/proposals/{{variant}}/proposals.json"),
        features=upstream("pseudolabels", "features", f"{RESULTS}/features/{{variant}}.zarr"),
        saliency=along("pseudolabels", ["proposals", "saliency"], f"{RESULTS}/saliency/{{variant}}"),
    output:
        directory(f"{RESULTS}/pseudolabels/{{variant}}"),
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
