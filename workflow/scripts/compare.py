from unseg.io import read_json
from unseg.provenance import log_to
from unseg.report_html import write_comparison

with log_to(snakemake.log[0], threads=snakemake.threads):
    metrics = {variant: read_json(path) for variant, path in zip(snakemake.params.variants, snakemake.input.metrics)}
    write_comparison(metrics, snakemake.output.md, snakemake.output.html)
