from unseg.audit import audit_comparison
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    audit_comparison(job.params.comparison["stage"], job.params.comparison["variants"], dict(job.input),
                     job.output[0], job.params.max_images, job.params.page_size)
