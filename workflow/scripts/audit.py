from pathlib import Path

from unseg.core.jobs import stage_job
from unseg.reports.audit import audit_stage

with stage_job(snakemake) as job:
    page = Path(job.output[0]) / "index.html"  # the rule's output is the page's folder
    audit_stage(job.rule.removeprefix("audit_"), dict(job.input), page, job.params.max_images, job.params.page_size)
