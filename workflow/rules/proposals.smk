rule proposals:
    input:
        index=index_csv(),
        masks=upstream("proposals", "masks", f"{RESULTS}/masks/{{variant}}/masks.json"),
        saliency=upstream("proposals", "saliency", f"{RESULTS}/saliency/{{variant}}"),
    output:
        f"{RESULTS}/proposals/{{variant}}/proposals.json",
    params:
        settings=variant_settings("proposals"),
        chain=config_chain("proposals"),
    log:
        f"{LOGS}/proposals/{{variant}}.log",
    script:
        "../scripts/proposals.py"
