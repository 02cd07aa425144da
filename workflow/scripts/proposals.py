from unseg.core.jobs import stage_job
from unseg.stages.proposals import run_proposals

with stage_job(snakemake) as job:
    components = job.input.components or None  # [] when the variant names no components map
    votes = dict(zip(job.params.settings.get("votes", []), job.input.votes)) or None
    run_proposals(job.input.masks, job.input.saliency, job.input.index, job.output[0], job.params.settings,
                  out_rejected=job.output.rejected, components_dir=components, votes=votes)
