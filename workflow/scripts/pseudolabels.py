from unseg.index import names_by_id, read_index
from unseg.provenance import log_to, write_provenance
from unseg.pseudolabels import run_pseudolabels

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    run_pseudolabels(snakemake.input.proposals, snakemake.input.features, snakemake.input.saliency,
                     names_by_id(read_index(snakemake.input.index)), snakemake.output[0], num_clusters=s["clusters"],
                     background_clusters=s["background_clusters"], min_score=s["min_score"], facet=s["facet"],
                     seed=s["seed"])
    write_provenance(snakemake.output[0], "pseudolabels", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
