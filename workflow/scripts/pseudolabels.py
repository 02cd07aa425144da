from unseg.core.jobs import stage_job
from unseg.data.index import image_paths, names_by_id, read_index, split_names
from unseg.stages.pseudolabels import run_pseudolabels

with stage_job(snakemake) as job:
    index = read_index(job.input.index)
    names = names_by_id(index)
    support = split_names(index, job.params.settings.get("support_split"))  # clustered, never painted
    run_pseudolabels(job.input.proposals or None, job.input.features, job.input.saliency or None, names,
                     job.output[0], job.params.settings,
                     support_ids={image_id for image_id, name in names.items() if name in support},
                     image_paths=image_paths(job.input.index), crops_store=job.input.crops or None)
