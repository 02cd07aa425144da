# Audit pages: HTML galleries of overlays for every intermediate mask.


include: "inputs/audit.smk"


# One audit rule per stage, audit_{stage}, from this table: its named inputs and the page's subcategory in the
# report. Every rule runs audit.py, writes the folder PATHS["audit_{stage}"] and logs to
# logs/{dataset}/audit/{stage}/{variant}.log. (The side-by-side page, audit_compare, is a rule of its own below: its
# inputs depend on the compared stage, and another script draws it.)
AUDITS = {
    "masks": dict(inputs=dict(index=PATHS["index"], truth=PATHS["index_truth"], masks=PATHS["masks"]),
                  subcategory="masks"),
    "saliency": dict(inputs=dict(index=PATHS["index"], saliency=PATHS["saliency"]), subcategory="saliency"),
    "proposals": dict(inputs=dict(index=PATHS["index"], truth=PATHS["index_truth"], proposals=PATHS["proposals"],
                                  rejected=PATHS["proposals_rejected"],
                                  saliency=upstream("proposals", "saliency", "saliency")),
                      subcategory="proposals"),
    "pseudolabels": dict(inputs=dict(index=PATHS["index"], labels=PATHS["pseudolabels"]), subcategory="pseudolabels"),
    "predict": dict(inputs=dict(index=PATHS["index"], labels=PATHS["predict"],
                                pseudolabels=upstream("train", "pseudolabels", "pseudolabels"),
                                rounds=predict_round_labels),
                    subcategory="predictions"),
    "instances": dict(inputs=dict(index=PATHS["index"], truth=PATHS["index_truth"],
                                  proposals=upstream("instances", "proposals", "proposals"),
                                  rounds=instances_round_detections, instances=instances_last_detections),
                      subcategory="instances"),
}


# (The script path is a literal: Snakemake evaluates a rule's script directive when the job runs, after the loop.)
for _stage, _audit in AUDITS.items():

    rule:
        name:
            f"audit_{_stage}"
        input:
            **_audit["inputs"],
        output:
            report(
                directory(PATHS[f"audit_{_stage}"]),
                htmlindex=AUDIT_INDEX,
                caption="../report/audit.rst",
                category="Audit",
                subcategory=_audit["subcategory"],
            ),
        params:
            max_images=config["audit"]["max_images"],
            page_size=config["audit"]["page_size"],
        threads: 1
        log:
            f"{LOGS}/audit/{_stage}/{{variant}}.log",
        conda:
            "../envs/unseg.yaml"
        script:
            "../scripts/audit.py"


rule audit_compare:
    input:
        unpack(comparison_inputs),
    output:
        report(
            directory(PATHS["audit_compare"]),
            htmlindex=AUDIT_INDEX,
            caption="../report/audit.rst",
            category="Audit",
            subcategory="side by side",
        ),
    params:
        comparison=lambda wildcards: config["audit"]["compare"][wildcards.variant],
        max_images=config["audit"]["max_images"],
        page_size=config["audit"]["page_size"],
    threads: 1
    log:
        f"{LOGS}/audit/compare/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit_compare.py"
