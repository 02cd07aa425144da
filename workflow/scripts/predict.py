from unseg.index import read_index
from unseg.jobs import stage_job
from unseg.predict import predict

with stage_job(snakemake) as job:
    predict(job.input.model, job.input.features, read_index(job.input.index).name.tolist(), job.output[0])
