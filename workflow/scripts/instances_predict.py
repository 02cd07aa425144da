from unseg.core.jobs import stage_job
from unseg.data.index import image_paths, read_index
from unseg.stages.instances.stage import run_instances_predict

with stage_job(snakemake) as job:
    run_instances_predict(job.input.model, job.input.features, list(read_index(job.input.index).name), job.output[0],
                          image_paths(job.input.index), job.params.device, **job.params.output_rules)
