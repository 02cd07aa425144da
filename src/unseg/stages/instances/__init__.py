"""The instances stage: a class-agnostic instance segmenter trained on the proposals, then on its own confident
detections, round after round → ``instances/{variant}/round-{r}/``.

Each round is a folder and a job of its own:

* ``targets.json`` (round r ≥ 2): what the round trains on (:func:`.targets.merge_round_targets`): round r-1's
  detections scoring at least ``self_training_score`` (0.9 by default), and with ``keep_proposals`` every proposal
  whose mask overlaps none of them by ``self_training_iou`` or more (CutLER's ``get_self_training_ann.py``: threshold
  0.7, IoU 0.5; measured worse on multi-k proposals, docs/benchmarks.md "Instances stage"). Round 1 trains on the
  proposals themselves (``min_target_score`` and up).
* ``model.pt`` (+ ``last.pt`` while training, resumed only for the same settings and inputs; ``log.csv``);
* ``instances.json``: the round's detections on every image, COCO results (RLE at the original resolution,
  ``score``, ``bbox``, ``category_id`` 1);
* ``metrics.json`` / ``report.md``: class-agnostic AP / AR and recall by instance count, as the proposals report
  scores them (:func:`unseg.stages.proposals.evaluate_proposals`), and ``instances/{variant}/report.md`` tabulates
  proposals → round 1 → round 2 → ... (:func:`.report.write_rounds_report`).

Methods are declared in :mod:`unseg.methods.instances` (``declare("instances", name, "module:function", schema=...,
build_model=Reference(...))``, :mod:`unseg.config.registry`; a plugin may use ``@register``): the function takes
:class:`.data.InstanceTrainingInputs` and its settings as keywords, trains, and writes ``model.pt`` (whose config names
the ``method``), ``last.pt`` and ``log.csv``; ``build_model(config)`` rebuilds an :class:`.model.InstanceSegmenter`-like
model (``model(inputs)`` → per image ``boxes`` in the model frame, ``scores``, ``masks`` (N, 1, M, M)) for
:func:`.detect.detect_instances`.

The modules, in the order a round uses them:

* :mod:`.stage`: the entry points of the workflow's jobs (``run_round_targets``, ``run_instances_train``,
  ``run_instances_predict``);
* :mod:`unseg.training.rounds` (shared with the train stage): the settings of each round and the check that each can
  start from the previous one;
* :mod:`.targets`: round r's targets from round r-1's detections, and one image's targets in the model frame, with
  the augmentations that move them (horizontal flip, copy-paste);
* :mod:`.data`: what a trainer reads (:class:`.data.InstanceTrainingInputs`, :class:`.data.InstanceDataset`);
* :mod:`.model`: the Mask R-CNN over the ViT's token grid (simple feature pyramid, DropLoss, the pairwise colour
  term of ``mask_loss: mask_pairwise``);
* :mod:`.training`: the built-in method ``mask_rcnn`` (declared in :mod:`unseg.methods.instances`) and its training
  loop;
* :mod:`.detect`: a trained model's detections at the original resolution (pasting, rescoring, CRF refinement);
* :mod:`.report`: the table of the proposals and every round.
"""

from unseg.stages.instances import training  # noqa: F401  (the built-in method, mask_rcnn)
