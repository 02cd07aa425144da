# The input and params functions of train.smk's rules and its parse-time checks of the config.
from unseg.training.rounds import check_round_chain, check_teacher_student, is_teacher_student, settings_of_round

try:
    for _variant, _settings in config["train"].items():
        check_round_chain(_settings, _variant)
        check_teacher_student(_settings, _variant)
except ValueError as error:
    raise WorkflowError(f"config error: {error}")
for _variant, _settings in config["train"].items():
    # A teacher-student trainer's rounds bootstrap their labels without a CRF (its crf setting is not read).
    if _settings["rounds"] > 1 and _settings["crf"] and not is_teacher_student(_settings["method"]):
        require_crf(f"train.{_variant}.crf: rounds {_settings['rounds']} refine each round's predictions with a "
                    f"dense CRF, and {INSTALL_HINT}; or set crf: false")


def round_settings(wildcards):
    """Params function: the settings of this round (the variant's, with its round_settings override)."""
    return settings_of_round(config["train"][wildcards.variant], int(wildcards.round))


def round_chain(offset=0, keys=()):
    """Params function: the provenance chain of a round's artifact, the train variant's settings being those of round
    ``round + offset`` (plus the variant's ``keys``): editing another round's settings leaves it alone."""

    def chain(wildcards):
        resolved = resolve_chain(config, "train", wildcards.variant)
        settings = config["train"][wildcards.variant]
        round_index = int(wildcards.round) + offset
        resolved["train"][wildcards.variant] = {**settings_of_round(settings, round_index), "round": round_index,
                                                **{key: settings[key] for key in keys}}
        return resolved

    return chain


def round_labels(wildcards):
    """Input function: what a round trains on."""
    round_index = int(wildcards.round)
    settings_of_round(config["train"][wildcards.variant], round_index)  # a round beyond 'rounds' is an error
    if round_index == 1:
        return PATHS["pseudolabels"].format(variant=config["train"][wildcards.variant]["pseudolabels"])
    return PATHS["round_labels"].format(variant=wildcards.variant, round=round_index)


def finetuned_weights(round_of):
    """Input function: the backbone's weights file when the round ``round_of(wildcards)`` runs the backbone on
    images (fine-tuning its last blocks, or TransFGU's augmented training through it), else nothing."""

    def inputs(wildcards):
        settings = settings_of_round(config["train"][wildcards.variant], round_of(wildcards))
        reads_images = settings.get("finetune_blocks") or settings.get("augment")
        return backbone_weights(settings["features"]) if reads_images else []

    return inputs


def previous_model(wildcards):
    """Input function: the previous round's model when this round starts from it, else nothing (a teacher-student
    trainer's student starts afresh every round, whatever init_from_previous says: TransFGU, section 3.3)."""
    round_index = int(wildcards.round)
    settings = config["train"][wildcards.variant]
    if round_index == 1 or not settings["init_from_previous"] or is_teacher_student(settings["method"]):
        return {}
    return {"previous": PATHS["model"].format(variant=wildcards.variant, round=round_index - 1)}


def bootstrap_initial_labels(wildcards):
    """Input function of a round's labels: for a teacher-student trainer, the initial pseudo-labels that round r's
    labels average with round r-1's model (TransFGU, Eq. 12), else nothing."""
    settings = config["train"][wildcards.variant]
    if not is_teacher_student(settings["method"]):
        return {}
    return {"initial": PATHS["pseudolabels"].format(variant=settings["pseudolabels"])}


def support_split(wildcards):
    """Params function: the support split of the pseudo-labels (its images are clustered, never trained on)."""
    return config["pseudolabels"][config["train"][wildcards.variant]["pseudolabels"]].get("support_split")


def round_label_sources(train):
    """(label, folder) of what train variant ``train`` trained on: its pseudo-labels, then each later round's."""
    sources = [("pseudo-labels", PATHS["pseudolabels"].format(variant=config["train"][train]["pseudolabels"]))]
    for round_index in range(2, config["train"][train]["rounds"] + 1):
        sources.append((f"round {round_index} labels", PATHS["round_labels"].format(variant=train, round=round_index)))
    return sources
