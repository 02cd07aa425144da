from unseg.index import names_by_id, read_index
from unseg.proposals import run_proposals
from unseg.provenance import log_to, write_provenance

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    index = read_index(snakemake.input.index)
    run_proposals(snakemake.input.masks, snakemake.input.saliency, names_by_id(index), snakemake.output[0],
                  min_salient_fraction=s["min_salient_fraction"], nms_iou=s["nms_iou"], crf=s["crf"],
                  image_paths=dict(zip(index["name"], index["path"])))
    write_provenance(snakemake.output[0], "proposals", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
