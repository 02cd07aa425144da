from unseg.proposals import evaluate_proposals
from unseg.provenance import log_to

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    evaluate_proposals(snakemake.input.index, snakemake.params.root, snakemake.input.proposals, snakemake.input.saliency,
                       snakemake.output.metrics, snakemake.output.report, split=s["report_split"],
                       min_instance_area=s["min_instance_area"], provenance=snakemake.params.chain)
