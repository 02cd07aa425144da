from unseg.core.jobs import stage_job
from unseg.stages.evaluate import run_evaluation

with stage_job(snakemake) as job:
    run_evaluation(job.input.index, job.input.truth, job.input.predictions, job.input.proposals or None,
                   job.output.metrics,
                   job.output.report, job.params.settings, num_classes=job.params.num_classes,
                   class_names=job.params.class_names, provenance=job.params.chain, out_html=job.output.html,
                   saliency_dir=job.input.saliency or None, features_store=job.input.features,
                   training_labels=dict(zip(job.params.training_labels, job.input.training_labels)))
