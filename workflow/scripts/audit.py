from unseg.audit import audit_stage
from unseg.provenance import log_to

with log_to(snakemake.log[0], threads=snakemake.threads):
    audit_stage(snakemake.rule.removeprefix("audit_"), dict(snakemake.input), snakemake.output[0], snakemake.params.max_images)
