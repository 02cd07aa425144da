from unseg.features import shard_plan
from unseg.index import read_index
from unseg.io import write_json
from unseg.jobs import stage_job

with stage_job(snakemake):
    s = snakemake.params.settings
    index = read_index(snakemake.input[0])
    write_json(snakemake.output[0], shard_plan(
        index.path.tolist(), index.name.tolist(), index.image_id.tolist(), list(zip(index.height, index.width)),
        backbone=s["backbone"], resolution=s["resolution"], layout=s["layout"], batch_size=s["batch_size"],
        shards=s["shards"]))
