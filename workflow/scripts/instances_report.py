from unseg.core.jobs import stage_job
from unseg.stages.instances.report import write_rounds_report

with stage_job(snakemake) as job:
    write_rounds_report(list(zip(job.params.labels, job.input.metrics)), job.output.md, job.output.summary)
