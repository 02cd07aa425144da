from pathlib import Path

from unseg.index import image_paths, names_by_id, read_index
from unseg.instances import run_instances_train
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    run_instances_train(job.input.features, job.input.targets, names_by_id(read_index(job.input.index)),
                        Path(job.output.model).parent, job.params.settings, image_paths=image_paths(job.input.index),
                        initial_model=job.input.get("previous"))
