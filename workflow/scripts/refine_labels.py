from unseg.core.jobs import stage_job
from unseg.data.index import image_paths, read_index, split_names
from unseg.stages.predict import bootstrap_labels, refine_labels

with stage_job(snakemake) as job:
    support = split_names(read_index(job.input.index), job.params.support_split)  # never trained on
    paths = {name: path for name, path in image_paths(job.input.index).items() if name not in support}
    if "initial" in job.input.keys():  # a teacher-student trainer: TransFGU's bootstrapped labels (Eq. 12)
        summary = bootstrap_labels(job.input.model, job.input.features, job.input.initial, paths, job.output[0])
        print(f"bootstrap_labels: {summary}")
    else:
        summary = refine_labels(job.input.model, job.input.features, paths, job.output[0], crf=job.params.crf)
        print(f"refine_labels: {summary}")
