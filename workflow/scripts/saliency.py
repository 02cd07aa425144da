from unseg.index import image_paths
from unseg.jobs import stage_job
from unseg.saliency import run_saliency

with stage_job(snakemake) as job:
    images = image_paths(job.input.index) if "index" in job.input.keys() else None  # only refine: crf reads them
    run_saliency(job.input.features, job.output[0], job.params.settings, image_paths=images)
