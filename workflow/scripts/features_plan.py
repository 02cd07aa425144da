from unseg.features import shard_plan
from unseg.index import read_index
from unseg.io import write_json
from unseg.provenance import log_to

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    index = read_index(snakemake.input[0])
    write_json(snakemake.output[0], shard_plan(
        index.path.tolist(), index.name.tolist(), index.image_id.tolist(), list(zip(index.height, index.width)),
        backbone=s["backbone"], resolution=s["resolution"], layout=s["layout"], batch_size=s["batch_size"],
        shards=s["shards"]))
