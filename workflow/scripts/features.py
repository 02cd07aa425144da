from unseg.core.jobs import stage_job
from unseg.features.extract import assemble_shards, run_features
from unseg.features.fused import shard_store

with stage_job(snakemake) as job:
    if "shards" in job.input.keys():  # join the shard stores (a fused variant's: inside its shard folders)
        assemble_shards([shard_store(path) for path in job.input.shards], job.output[0])
    else:  # the whole list, or one shard of it
        run_features(job.input.index, job.output[0], job.params.settings, job.params.weights_file,
                     shard=job.wildcards.get("shard"), threads=job.threads)
