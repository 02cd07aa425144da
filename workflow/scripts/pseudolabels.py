from unseg.index import names_by_id, read_index
from unseg.jobs import stage_job
from unseg.pseudolabels import run_pseudolabels

with stage_job(snakemake) as job:
    run_pseudolabels(job.input.proposals, job.input.features, job.input.saliency,
                     names_by_id(read_index(job.input.index)), job.output[0], job.params.settings)
