from unseg.core.jobs import stage_job
from unseg.data.index import image_paths
from unseg.features.fused import join_fused_masks
from unseg.stages.masks import masks_reuse_folder, run_masks

with stage_job(snakemake) as job:
    if "fused" in job.input.keys():  # computed by the fused feature jobs: join their shards
        join_fused_masks(job.input.fused, job.wildcards.variant, job.output[0])
    else:
        # the variant's per-image rows are kept beside its output for the next run (masks/{variant}.reuse/)
        run_masks(job.input.features, job.output[0], job.params.settings, image_paths=image_paths(job.input.index),
                  reuse=masks_reuse_folder(job.output[0]))
