# The input and params functions of saliency.smk's rules.

def saliency_images(wildcards):
    """Input function: the index, for a saliency variant that reads its images (refine: crf)."""
    return {"index": PATHS["index"]} if config["saliency"][wildcards.variant].get("refine") == "crf" else {}


def mask_folder_listing(settings):
    """Params value: for a mask_folder variant, a digest of its folder's files (edited masks re-run it)."""
    if settings["method"] != "mask_folder":
        return ""
    from unseg.stages.saliency import folder_listing_digest  # LEAD: from a torch-free module once it moves there

    return folder_listing_digest(settings["path"])
