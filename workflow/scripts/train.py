from pathlib import Path

from unseg.core.jobs import stage_job
from unseg.data.index import image_paths, read_index, split_ground_truth, split_names
from unseg.stages.train import run_train

with stage_job(snakemake) as job:
    index = read_index(job.input.index)
    support = split_names(index, job.params.support_split)  # clustered only: no labels to train on
    run_train(job.input.features, job.input.labels, [name for name in index.name if name not in support],
              Path(job.output.model).parent, job.params.num_classes, job.params.settings,
              monitor_paths=split_ground_truth(index, job.params.monitor_split),
              initial_model=job.input.get("previous"), image_paths=image_paths(job.input.index))
