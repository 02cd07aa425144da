from unseg.index import image_paths
from unseg.jobs import stage_job
from unseg.predict import refine_labels

with stage_job(snakemake) as job:
    summary = refine_labels(job.input.model, job.input.features, image_paths(job.input.index),
                            job.output[0], crf=job.params.crf)
    print(f"refine_labels: {summary}")
