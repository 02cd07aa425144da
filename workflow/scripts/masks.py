from unseg.proposals import run_masks
from unseg.provenance import log_to, write_provenance

with log_to(snakemake.log[0]):
    s = snakemake.params.settings
    run_masks(snakemake.input.features, snakemake.output[0], ks=s["k"], facet=s["facet"],
              split_components=s["split_components"], min_area_fraction=s["min_area_fraction"], seed=s["seed"])
    write_provenance(snakemake.output[0], "masks", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
