from unseg.downloads import download_dataset
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    download_dataset(job.params.kind, job.params.downloads, job.output[0])
