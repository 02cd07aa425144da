from unseg.proposals import run_saliency
from unseg.provenance import log_to, write_provenance

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    run_saliency(snakemake.input.features, snakemake.output[0], facet=s["facet"], batch_size=s["batch_size"],
                 precision=s["solver_precision"])
    write_provenance(snakemake.output[0], "saliency", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
