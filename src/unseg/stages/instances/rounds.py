"""How an instances variant's rounds are laid out: the settings of round r (:func:`settings_of_round`), the rounds
it runs (:func:`rounds_needed`), and the check that each round can start from the previous one
(:func:`check_round_chain`, run before any job by ``workflow/rules/common.smk``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unseg.stages.instances.targets import MERGE_KEYS
from unseg.stages.train import settings_of_round as train_settings_of_round

# The variant's settings about its rounds, not about one round's training.
ROUND_KEYS = ("rounds", "round_settings", "init_from_previous", *MERGE_KEYS, "rescore", "rescore_facet", "crf")


def settings_of_round(settings: Mapping[str, Any], round_index: int) -> dict[str, Any]:
    """The settings round ``round_index`` of an instances variant trains with
    (:func:`unseg.stages.train.settings_of_round`
    with this stage's round keys)."""
    return train_settings_of_round(settings, round_index, ROUND_KEYS)


def rounds_needed(settings: Mapping[str, Any]) -> list[int]:
    """1..rounds of a variant."""
    return list(range(1, int(settings.get("rounds", 1)) + 1))


def check_round_chain(settings: Mapping[str, Any], variant: str) -> None:
    """Raise a ValueError naming ``instances.{variant}`` when a round that starts from the previous one cannot (a
    different architecture or number of fine-tuned blocks)."""
    if not settings.get("init_from_previous", True):
        return
    keys = ("method", "channels", "scales", "finetune_blocks")
    rounds = [settings_of_round(settings, r) for r in rounds_needed(settings)]
    for index in range(1, len(rounds)):
        before = {key: rounds[index - 1].get(key) for key in keys}
        after = {key: rounds[index].get(key) for key in keys}
        if before != after:
            raise ValueError(f"instances.{variant}.round_settings: round {index + 1} ({after}) starts from round "
                             f"{index} ({before}); keep them equal or set init_from_previous: false")
