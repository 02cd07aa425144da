# Self-training rounds: round 1 trains on the pseudo-labels, round r on round r-1's predictions (CRF-refined when the
# variant's crf is true). Each round is a folder and a job of its own, so editing round 3's settings re-runs round 3
# and what follows it only.


include: "inputs/train.smk"


rule train:
    input:
        unpack(previous_model),
        index=PATHS["index"],
        labels=round_labels,
        features=upstream("train", "features", "features"),
        weights=finetuned_weights(lambda wildcards: int(wildcards.round)),
    output:
        model=PATHS["model"],
        log_csv=PATHS["train_log"],
    params:
        settings=round_settings,
        monitor_split=lambda wildcards: config["train"][wildcards.variant].get("monitor_split"),
        support_split=support_split,
        chain=round_chain(),
        num_classes=lambda wildcards: config["pseudolabels"][config["train"][wildcards.variant]["pseudolabels"]]["clusters"] + 1,
    threads: 8
    resources:
        gpu=lambda wildcards: 1 if "cuda" in str(config["train"][wildcards.variant].get("device") or "") else 0,
    log:
        f"{LOGS}/train/{{variant}}/round-{{round}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/train.py"


# The labels of round r >= 2: round r-1's predictions of every image, refined by a dense CRF on the image; for a
# teacher-student trainer (transfgu_bootstrap), the initial pseudo-labels averaged with round r-1's model, no CRF.
rule refine_labels:
    input:
        unpack(bootstrap_initial_labels),
        index=PATHS["index"],
        model=lambda wildcards: PATHS["model"].format(variant=wildcards.variant, round=int(wildcards.round) - 1),
        features=upstream("train", "features", "features"),
        weights=finetuned_weights(lambda wildcards: int(wildcards.round) - 1),
    output:
        directory(PATHS["round_labels"]),
    params:
        crf=lambda wildcards: config["train"][wildcards.variant]["crf"]
        and not is_teacher_student(config["train"][wildcards.variant]["method"]),
        support_split=support_split,
        chain=round_chain(offset=-1, keys=("crf",)),
    threads: 4
    log:
        f"{LOGS}/train/{{variant}}/round-{{round}}-labels.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/refine_labels.py"
