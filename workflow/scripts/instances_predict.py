from unseg.index import image_paths, read_index
from unseg.instances import run_instances_predict
from unseg.jobs import stage_job

with stage_job(snakemake) as job:
    run_instances_predict(job.input.model, job.input.features, list(read_index(job.input.index).name), job.output[0],
                          image_paths(job.input.index), job.params.device, **job.params.output_rules)
