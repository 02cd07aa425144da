from unseg.core.jobs import stage_job
from unseg.stages.proposals import evaluate_proposals

with stage_job(snakemake) as job:
    evaluate_proposals(job.input.index, job.input.truth, job.input.proposals, job.input.saliency, job.output.metrics,
                       job.output.report, split=job.params.settings["report_split"],
                       min_instance_area=job.params.settings["min_instance_area"], provenance=job.params.chain,
                       title=job.params.get("title"))
