from pathlib import Path

from unseg.contrast import ContrastInputs, run_contrast
from unseg.index import image_paths
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    run_contrast(ContrastInputs(Path(job.input.features), image_paths(job.input.index), Path(job.input.saliency),
                                Path(job.output.model).parent, Path(job.output.embeddings), job.params.settings),
                 job.params.settings)
