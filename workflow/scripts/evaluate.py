from unseg.evaluate import run_evaluation
from unseg.provenance import log_to

with log_to(snakemake.log[0], threads=snakemake.threads):
    s = snakemake.params.settings
    run_evaluation(snakemake.input.index, snakemake.params.root, snakemake.input.predictions, snakemake.input.proposals,
                   snakemake.output.metrics, snakemake.output.report, split=s.get("split", "val"),
                   matching=s.get("matching", "hungarian"), num_classes=snakemake.params.num_classes,
                   class_names=snakemake.params.class_names, provenance=snakemake.params.chain,
                   out_html=snakemake.output.html, saliency_dir=snakemake.input.saliency,
                   features_store=snakemake.input.features,
                   options={key: s[key] for key in ("crf", "facet", "linear_probe", "kmeans", "retrieval", "num_examples") if key in s})
