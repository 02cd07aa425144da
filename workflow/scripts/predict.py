from unseg.index import read_index
from unseg.provenance import log_to, write_provenance
from unseg.train import predict

with log_to(snakemake.log[0], threads=snakemake.threads):
    predict(snakemake.input.model, snakemake.input.features, read_index(snakemake.input.index).name.tolist(), snakemake.output[0])
    write_provenance(snakemake.output[0], "predict", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
