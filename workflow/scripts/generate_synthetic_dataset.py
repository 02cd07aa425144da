from unseg.provenance import log_to
from unseg.synthetic import generate_synthetic_dataset

with log_to(snakemake.log[0], threads=snakemake.threads):
    settings = {k: v for k, v in snakemake.params.settings.items() if k != "kind"}
    generate_synthetic_dataset(snakemake.output[0], **settings)
