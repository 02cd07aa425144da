from unseg.audit import audit_stage
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    audit_stage(job.rule.removeprefix("audit_"), dict(job.input), job.output[0], job.params.max_images,
                job.params.page_size)
