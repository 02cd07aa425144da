from unseg.index import build_index, write_index
from unseg.jobs import stage_job

with stage_job(snakemake):
    write_index(build_index(snakemake.params.root), snakemake.output[0])
