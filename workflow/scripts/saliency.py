from unseg.jobs import stage_job
from unseg.saliency import run_saliency

with stage_job(snakemake) as job:
    run_saliency(job.input.features, job.output[0], job.params.settings)
