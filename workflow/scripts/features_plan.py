from unseg.core.io import write_json
from unseg.core.jobs import stage_job
from unseg.data.index import read_index
from unseg.features.extract import shard_plan

with stage_job(snakemake):
    s = snakemake.params.settings
    index = read_index(snakemake.input[0])
    write_json(snakemake.output[0], shard_plan(
        index.path.tolist(), index.name.tolist(), index.image_id.tolist(), list(zip(index.height, index.width)),
        backbone=s["backbone"], resolution=s["resolution"], layout=s["layout"], batch_size=s["batch_size"],
        shards=s["shards"]))
