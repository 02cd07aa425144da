from unseg.audit import audit_stage
from unseg.jobs import stage_job

with stage_job(snakemake):
    audit_stage(snakemake.rule.removeprefix("audit_"), dict(snakemake.input), snakemake.output[0], snakemake.params.max_images)
