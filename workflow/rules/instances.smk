# Instance self-training (unseg.stages.instances): round 1 trains a class-agnostic instance segmenter on the proposals, round
# r on round r-1's confident detections merged with the proposals they do not cover. Each round is a folder and jobs
# of its own: targets (r >= 2), model, detections of every image, metrics; the report puts them side by side.


include: "inputs/instances.smk"


rule instances_targets:
    input:
        predictions=lambda wildcards: PATHS["instances"].format(variant=wildcards.variant,
                                                                round=int(wildcards.round) - 1),
        proposals=upstream("instances", "proposals", "proposals"),
    output:
        PATHS["instances_targets"],
    params:
        settings=instances_merge_settings,
        chain=instances_targets_chain,
    threads: 1
    log:
        f"{LOGS}/instances/{{variant}}/round-{{round}}-targets.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/instances_targets.py"


rule instances_train:
    input:
        unpack(previous_instances_model),
        index=PATHS["index"],
        targets=instances_targets,
        features=upstream("instances", "features", "features"),
        weights=instances_weights(prediction=False),
    output:
        model=PATHS["instances_model"],
        log_csv=PATHS["instances_log"],
    params:
        settings=instances_round_settings,
        chain=instances_round_chain,
    threads: 8
    resources:
        gpu=instances_gpu,
    log:
        f"{LOGS}/instances/{{variant}}/round-{{round}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/instances_train.py"


rule instances_predict:
    input:
        index=PATHS["index"],
        model=PATHS["instances_model"],
        features=upstream("instances", "features", "features"),
        weights=instances_weights(prediction=True),
    output:
        PATHS["instances"],
    params:
        device=lambda wildcards: instances_round_settings(wildcards).get("device"),
        output_rules=lambda wildcards: {key: config["instances"][wildcards.variant][key]
                                        for key in ("rescore", "rescore_facet", "crf")},
        chain=instances_round_chain,
    threads: 4
    resources:
        gpu=instances_gpu,
    log:
        f"{LOGS}/instances/{{variant}}/round-{{round}}-predict.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/instances_predict.py"


# Each round scored as the proposals report scores the proposals (same split, ground truth and minimum instance area).
rule instances_metrics:
    input:
        index=PATHS["index"],
        truth=PATHS["index_truth"],
        proposals=PATHS["instances"],
        saliency=along("instances", ["proposals", "saliency"], "saliency"),
    output:
        metrics=PATHS["instances_metrics"],
        report=PATHS["instances_round_report"],
    params:
        settings=lambda wildcards: config["proposals"][config["instances"][wildcards.variant]["proposals"]],
        title=lambda wildcards: f"Instances {wildcards.variant}, round {wildcards.round}",
        chain=instances_round_chain,
    threads: 2
    log:
        f"{LOGS}/instances/{{variant}}/round-{{round}}-metrics.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/proposals_report.py"


rule instances_report:
    input:
        metrics=instances_round_metrics,
    output:
        md=report(PATHS["instances_report"], caption="../report/instances.rst", category="Instances"),
        summary=PATHS["instances_summary"],
    params:
        labels=lambda wildcards: ["proposals"] + [f"round {r}" for r in
                                                  range(1, config["instances"][wildcards.variant]["rounds"] + 1)],
        chain=config_chain("instances"),
    threads: 1
    log:
        f"{LOGS}/instances/{{variant}}/report.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/instances_report.py"
