# The input and params functions of saliency.smk's rules.
from unseg.core.provenance import folder_listing_digest


def saliency_images(wildcards):
    """Input function: the index, for a saliency variant that reads its images (refine: crf)."""
    return {"index": PATHS["index"]} if config["saliency"][wildcards.variant].get("refine") == "crf" else {}


def mask_folder_listing(settings):
    """Params value: for a mask_folder variant, a digest of its folder's files (edited masks re-run it)."""
    if settings["method"] != "mask_folder":
        return ""
    return folder_listing_digest(settings["path"])
