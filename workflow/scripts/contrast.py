from pathlib import Path

from unseg.core.jobs import stage_job
from unseg.data.index import image_paths
from unseg.stages.contrast import ContrastInputs, run_contrast

with stage_job(snakemake) as job:
    run_contrast(ContrastInputs(Path(job.input.features), image_paths(job.input.index), Path(job.input.saliency),
                                Path(job.output.model).parent, Path(job.output.embeddings), job.params.settings),
                 job.params.settings)
