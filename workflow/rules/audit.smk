# Audit pages: HTML galleries of overlays for every intermediate mask.


include: "inputs/audit.smk"


# One audit rule per stage, audit_{stage}: its named inputs (or an input function returning them, "unpacked"), the
# page's subcategory in the report, extra params and script (default audit.py). Every rule writes the folder
# PATHS["audit_{stage}"] and logs to logs/{dataset}/audit/{stage}/{variant}.log.
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
    "compare": dict(unpacked=comparison_inputs, subcategory="side by side", script="audit_compare.py",
                    params=dict(comparison=lambda wildcards: config["audit"]["compare"][wildcards.variant])),
    "instances": dict(inputs=dict(index=PATHS["index"], truth=PATHS["index_truth"],
                                  proposals=upstream("instances", "proposals", "proposals"),
                                  rounds=instances_round_detections, instances=instances_last_detections),
                      subcategory="instances"),
}


for _stage, _audit in AUDITS.items():

    rule:
        name:
            f"audit_{_stage}"
        input:
            *([unpack(_audit["unpacked"])] if "unpacked" in _audit else []),
            **_audit.get("inputs", {}),
        output:
            report(
                directory(PATHS[f"audit_{_stage}"]),
                htmlindex=AUDIT_INDEX,
                caption="../report/audit.rst",
                category="Audit",
                subcategory=_audit["subcategory"],
            ),
        params:
            **_audit.get("params", {}),
            max_images=config["audit"]["max_images"],
            page_size=config["audit"]["page_size"],
        threads: 1
        log:
            f"{LOGS}/audit/{_stage}/{{variant}}.log",
        conda:
            "../envs/unseg.yaml"
        script:
            f"../scripts/{_audit.get('script', 'audit.py')}"
