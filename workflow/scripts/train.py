from pathlib import Path

from unseg.index import read_index
from unseg.provenance import log_to, write_provenance
from unseg.train import train_head

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    names = read_index(snakemake.input.index).name
    labels = {name: Path(snakemake.input.pseudolabels) / f"{name}.png" for name in names}
    train_head(snakemake.input.features, labels, Path(snakemake.output.model).parent, snakemake.params.num_classes,
               epochs=s["epochs"], learning_rate=s["lr"], seed=s["seed"], config=s)
    write_provenance(snakemake.output.model, "train", snakemake.wildcards.variant, snakemake.params.chain, dict(snakemake.input))
