from unseg.core.jobs import stage_job
from unseg.features.fused import run_fused_shard

with stage_job(snakemake) as job:
    run_fused_shard(job.input.index, job.output[0], job.params.settings, job.params.fused, job.params.weights_file,
                    shard=int(job.wildcards.shard), threads=job.threads)
