from unseg.index import image_paths
from unseg.jobs import stage_job
from unseg.predict import predict

with stage_job(snakemake) as job:
    predict(job.input.model, job.input.features, image_paths(job.input.index), job.output[0])
