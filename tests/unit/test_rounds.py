"""The one rounds mechanism (unseg.training.rounds) on the instances stage's keys."""

import pytest

from unseg.training.rounds import MERGE_KEYS, check_round_chain, rounds_needed, settings_of_round


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
