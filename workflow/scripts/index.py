from unseg.core.jobs import stage_job
from unseg.data.index import run_index

with stage_job(snakemake) as job:
    run_index(job.params.root, job.output.index, job.output.skipped, job.params.settings,
              resized_dir=job.output.resized, truth_dir=job.output.truth)
