from unseg.core.jobs import stage_job
from unseg.data.index import image_paths
from unseg.features.fused import join_fused_saliency
from unseg.stages.saliency import run_saliency, saliency_reuse_folder

with stage_job(snakemake) as job:
    if "fused" in job.input.keys():  # computed by the fused feature jobs: join their shards
        join_fused_saliency(job.input.fused, job.wildcards.variant, job.output[0])
    else:
        images = image_paths(job.input.index) if "index" in job.input.keys() else None  # only refine: crf reads them
        # per-image maps are kept for the next run beside the output (saliency/{variant}.reuse/)
        run_saliency(job.input.features, job.output[0], job.params.settings, image_paths=images,
                     reuse=saliency_reuse_folder(job.output[0]))
