from unseg.index import image_paths
from unseg.jobs import stage_job
from unseg.masks import run_masks

with stage_job(snakemake) as job:
    run_masks(job.input.features, job.output[0], job.params.settings, image_paths=image_paths(job.input.index))
