from unseg.index import read_index
from unseg.proposals import run_masks
from unseg.provenance import log_to, write_provenance

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    index = read_index(snakemake.input.index)
    run_masks(snakemake.input.features, snakemake.output[0], ks=s["k"], facet=s["facet"],
              split_components=s["split_components"], min_area_fraction=s["min_area_fraction"], seed=s["seed"],
              method=s["method"], num_eigenvectors=s["num_eigenvectors"], eigen_masks=s["eigen_masks"],
              drop_background=s["drop_background"], color_weight=s["color_weight"],
              image_paths=dict(zip(index["name"], index["path"])), batch_size=s["batch_size"],
              precision=s["solver_precision"])
    write_provenance(snakemake.output[0], "masks", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
