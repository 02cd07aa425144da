from pathlib import Path

from unseg.index import read_index, split_ground_truth
from unseg.jobs import stage_job
from unseg.train import run_train

with stage_job(snakemake) as job:
    index = read_index(job.input.index)
    run_train(job.input.features, job.input.labels, index.name.tolist(), Path(job.output.model).parent,
              job.params.num_classes, job.params.settings,
              monitor_paths=split_ground_truth(index, job.params.monitor_split))
