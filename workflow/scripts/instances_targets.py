from unseg.core.jobs import stage_job
from unseg.stages.instances.stage import run_round_targets

with stage_job(snakemake) as job:
    run_round_targets(job.input.predictions, job.input.proposals, job.output[0], job.params.settings)
