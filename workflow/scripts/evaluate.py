from unseg.evaluate import run_evaluation
from unseg.provenance import log_to

with log_to(snakemake.log[0]):
    s = snakemake.params.settings
    run_evaluation(snakemake.input.index, snakemake.params.root, snakemake.input.predictions, snakemake.input.proposals,
                   snakemake.output.metrics, snakemake.output.report, split=s["split"], matching=s["matching"],
                   num_classes=snakemake.params.num_classes, class_names=snakemake.params.class_names,
                   provenance=snakemake.params.chain)
