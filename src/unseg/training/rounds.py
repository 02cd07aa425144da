"""Self-training rounds: which settings round r of a variant trains with, and whether a chain of rounds can run.

A variant with ``rounds: R`` trains R rounds, each its own artifact (``.../round{r}/``). Some of its settings are
about the rounds, not about one round's training (:data:`ROUND_KEYS` of its stage): they are left out of a round's
settings, and ``round_settings: {"r": {...}}`` overrides the rest for round r. An instances variant's
``round_settings`` may also override the merge of round r's targets (:data:`MERGE_KEYS`, e.g. CutLER's thresholds
0.7 then 0.65: :func:`merge_settings_of_round`). One implementation serves the train
stage (MaskDistill's CRF rounds, TransFGU's teacher-student rounds) and the instances stage (instance self-training),
parameterised by the stage.

This module imports no torch: the workflow (``workflow/rules/common.smk``) asks it about rounds while it builds the
job graph. A trainer's ``teacher_student`` attribute is read from :data:`unseg.config.registry.REGISTRIES`, filled
when the stage modules are imported (:func:`unseg.config.schema.load_methods`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unseg.config.registry import REGISTRIES

# How an instances variant's round r targets merge round r-1's detections with the proposals
# (:func:`unseg.stages.instances.targets.merge_round_targets`).
MERGE_KEYS = ("self_training_score", "self_training_iou", "keep_proposals")

# Per stage, the variant's settings about its rounds, not about one round's training.
ROUND_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("rounds", "crf", "round_settings", "init_from_previous"),
    "instances": ("rounds", "round_settings", "init_from_previous", *MERGE_KEYS, "rescore", "rescore_facet", "crf"),
}

# Per stage, the settings two consecutive rounds must share when the later one starts from the earlier one's model
# (train: checked on finetune_blocks alone, see check_round_chain).
CHAINED_KEYS: dict[str, tuple[str, ...]] = {"instances": ("method", "channels", "scales", "finetune_blocks")}


def rounds_needed(settings: Mapping[str, Any]) -> list[int]:
    """1..rounds of a variant (``rounds`` left out: one)."""
    return list(range(1, int(settings.get("rounds", 1)) + 1))


def round_settings(settings: Mapping[str, Any], round_index: int, round_keys: Sequence[str]) -> dict[str, Any]:
    """The settings one round trains with: the variant's with ``round_settings[str(round_index)]`` on top, without
    the ``round_keys`` (an override of a round key, such as an instances round's merge threshold, is read by
    :func:`merge_settings_of_round`).

    Raises:
        ValueError: ``round_index`` outside 1..rounds.
    """
    override = _round_override(settings, round_index)
    return {key: value for key, value in {**settings, **override}.items() if key not in round_keys}


def _round_override(settings: Mapping[str, Any], round_index: int) -> dict[str, Any]:
    """``round_settings[str(round_index)]`` (empty when absent), after checking the round exists."""
    rounds = int(settings.get("rounds", 1))
    if not 1 <= round_index <= rounds:
        raise ValueError(f"round {round_index} does not exist: the variant trains rounds 1..{rounds} ('rounds')")
    return dict((settings.get("round_settings") or {}).get(str(round_index), {}))


def merge_settings_of_round(settings: Mapping[str, Any], round_index: int) -> dict[str, Any]:
    """How round ``round_index`` (>= 2) of an instances variant merges round r-1's detections with the proposals:
    the variant's :data:`MERGE_KEYS`, with ``round_settings[str(round_index)]``'s on top (CutLER's self-training
    keeps detections scoring >= 0.7, then >= 0.65 in the next round), and the round's ``min_target_score`` (the
    trainer drops weaker targets, so the weaker proposals are not kept).

    Raises:
        ValueError: ``round_index`` outside 2..rounds.
    """
    if round_index < 2:
        raise ValueError(f"round {round_index} has no merged targets: round 1 trains on the proposals")
    merged = {**settings, **_round_override(settings, round_index)}
    # the proposals kept beside the detections are those this round's trainer keeps (its min_target_score)
    return {**{key: merged[key] for key in MERGE_KEYS}, "min_target_score": merged.get("min_target_score", 0.0)}


def settings_of_round(settings: Mapping[str, Any], round_index: int, stage: str = "train") -> dict[str, Any]:
    """The settings round ``round_index`` of a ``stage`` variant trains with (:func:`round_settings` with the
    stage's :data:`ROUND_KEYS`).

    Raises:
        ValueError: ``round_index`` outside 1..rounds.
    """
    return round_settings(settings, round_index, ROUND_KEYS[stage])


def check_round_chain(settings: Mapping[str, Any], variant: str, stage: str = "train") -> None:
    """Raise a ValueError naming ``{stage}.{variant}.round_settings`` when a round that starts from the previous one
    cannot.

    train: a fine-tuned round's model (backbone blocks and head) does not start a frozen-token round, nor one that
    fine-tunes another number of blocks (a frozen round does start a fine-tuning one: its head). instances: the
    rounds' :data:`CHAINED_KEYS` (architecture, fine-tuned blocks) must be equal.
    """
    if not settings.get("init_from_previous", True):
        return
    rounds = [settings_of_round(settings, r, stage) for r in rounds_needed(settings)]
    for index in range(1, len(rounds)):
        if stage == "train":
            previous, current = (int(rounds[i].get("finetune_blocks", 0)) for i in (index - 1, index))
            if previous not in (0, current):
                raise ValueError(f"train.{variant}.round_settings: round {index + 1} (finetune_blocks {current}) "
                                 f"starts from round {index}, which fine-tunes {previous} blocks; give both rounds "
                                 "the same finetune_blocks, or set init_from_previous: false")
            continue
        before = {key: rounds[index - 1].get(key) for key in CHAINED_KEYS[stage]}
        after = {key: rounds[index].get(key) for key in CHAINED_KEYS[stage]}
        if before != after:
            raise ValueError(f"{stage}.{variant}.round_settings: round {index + 1} ({after}) starts from round "
                             f"{index} ({before}); keep them equal or set init_from_previous: false")


def is_teacher_student(method: str) -> bool:
    """Whether the trainer ``method`` runs TransFGU's teacher-student rounds (registry attribute
    ``teacher_student``): round r's labels bootstrap the initial pseudo-labels with round r-1's model
    (:func:`unseg.stages.predict.bootstrap_labels`, no CRF) and its student starts afresh, not from round r-1's
    weights."""
    return method in REGISTRIES["train"] and bool(REGISTRIES["train"].get(method).attributes.get("teacher_student"))


def check_teacher_student(settings: Mapping[str, Any], variant: str) -> None:
    """Raise a ValueError naming ``train.{variant}.finetune_blocks`` when a teacher-student trainer
    (``transfgu_bootstrap``) is asked to fine-tune the backbone in some round; other trainers pass."""
    if not is_teacher_student(settings.get("method", "")):
        return
    method = REGISTRIES["train"].get(settings["method"])
    for round_index in rounds_needed(settings):
        blocks = int(settings_of_round(settings, round_index).get("finetune_blocks", 0))
        if blocks:
            raise ValueError(f"train.{variant}.finetune_blocks: {method.name} trains its student on the stored "
                             f"tokens; round {round_index} asks to fine-tune the ViT's last {blocks} block(s) (set 0)")
