from unseg.index import build_index, write_index
from unseg.provenance import log_to

with log_to(snakemake.log[0], threads=snakemake.threads):
    write_index(build_index(snakemake.params.root), snakemake.output[0])
