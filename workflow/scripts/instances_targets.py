from unseg.instances import run_round_targets
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    run_round_targets(job.input.predictions, job.input.proposals, job.output[0], job.params.settings)
