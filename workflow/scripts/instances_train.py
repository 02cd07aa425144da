from pathlib import Path

from unseg.core.jobs import stage_job
from unseg.data.index import image_paths, names_by_id, read_index
from unseg.stages.instances.stage import run_instances_train

with stage_job(snakemake) as job:
    run_instances_train(job.input.features, job.input.targets, names_by_id(read_index(job.input.index)),
                        Path(job.output.model).parent, job.params.settings, image_paths=image_paths(job.input.index),
                        initial_model=job.input.get("previous"))
