from unseg.index import run_index
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    run_index(job.params.root, job.output.index, job.output.skipped, job.params.settings,
              resized_dir=job.output.resized, truth_dir=job.output.truth)
