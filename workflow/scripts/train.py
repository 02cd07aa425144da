from pathlib import Path

from unseg.index import read_index
from unseg.jobs import stage_job
from unseg.train import run_train

with stage_job(snakemake) as job:
    run_train(job.input.features, job.input.pseudolabels, read_index(job.input.index).name.tolist(),
              Path(job.output.model).parent, job.params.num_classes, job.params.settings)
