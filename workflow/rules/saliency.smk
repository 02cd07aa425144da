rule saliency:
    input:
        features=upstream("saliency", "features", "features"),
    output:
        directory(PATHS["saliency"]),
    params:
        settings=variant_settings("saliency"),
        chain=config_chain("saliency"),
        masks_listing=lambda wildcards: mask_folder_listing(config["saliency"][wildcards.variant]),
    threads: 8
    log:
        f"{LOGS}/saliency/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/saliency.py"


def mask_folder_listing(settings):
    """Params value: for a mask_folder variant, a digest of its folder's files (edited masks re-run it)."""
    from unseg.saliency import folder_listing_digest

    return folder_listing_digest(settings["path"]) if settings["method"] == "mask_folder" else ""
