from unseg.instances import write_rounds_report
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    write_rounds_report(list(zip(job.params.labels, job.input.metrics)), job.output.md, job.output.summary)
