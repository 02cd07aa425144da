from unseg.io import read_json
from unseg.jobs import stage_job
from unseg.report_html import write_comparison

with stage_job(snakemake):
    metrics = {variant: read_json(path) for variant, path in zip(snakemake.params.variants, snakemake.input.metrics)}
    write_comparison(metrics, snakemake.output.md, snakemake.output.html)
