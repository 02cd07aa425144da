from unseg.proposals import run_saliency
from unseg.provenance import log_to, write_provenance

with log_to(snakemake.log[0]):
    run_saliency(snakemake.input.features, snakemake.output[0], facet=snakemake.params.settings["facet"])
    write_provenance(snakemake.output[0], "saliency", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
