from unseg.core.jobs import stage_job
from unseg.data.index import image_paths
from unseg.stages.predict import predict

with stage_job(snakemake) as job:
    predict(job.input.model, job.input.features, image_paths(job.input.index), job.output[0])
