from unseg.core.jobs import stage_job
from unseg.data.synthetic import generate_synthetic_dataset

with stage_job(snakemake):
    settings = {k: v for k, v in snakemake.params.settings.items() if k != "kind"}
    generate_synthetic_dataset(snakemake.output[0], **settings)
