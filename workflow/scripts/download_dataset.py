from unseg.core.jobs import stage_job
from unseg.data.downloads import download_dataset

with stage_job(snakemake) as job:
    download_dataset(job.params.kind, job.params.downloads, job.output[0])
