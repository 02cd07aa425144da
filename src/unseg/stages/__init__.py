"""One module (or subpackage) per pipeline stage: masks, saliency, contrast, proposals, pseudolabels, train, predict,
instances, evaluate. Each registers its methods (:mod:`unseg.config.registry`) and has the ``run_*`` entry its workflow
script calls."""
