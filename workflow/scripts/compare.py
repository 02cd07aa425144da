from unseg.core.io import read_json
from unseg.core.jobs import stage_job
from unseg.reports.html import write_comparison

with stage_job(snakemake):
    metrics = {variant: read_json(path) for variant, path in zip(snakemake.params.variants, snakemake.input.metrics)}
    write_comparison(metrics, snakemake.output.md, snakemake.output.html)
