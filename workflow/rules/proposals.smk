rule proposals:
    input:
        index=PATHS["index"],
        masks=upstream("proposals", "masks", "masks"),
        saliency=upstream("proposals", "saliency", "saliency"),
        components=upstream("proposals", "components", "saliency"),
        votes=upstream_list("proposals", "votes", "masks"),
    output:
        PATHS["proposals"],
        rejected=PATHS["proposals_rejected"],
    params:
        settings=variant_settings("proposals"),
        chain=config_chain("proposals"),
    threads: 4
    log:
        f"{LOGS}/proposals/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/proposals.py"


rule proposals_report:
    input:
        index=PATHS["index"],
        proposals=PATHS["proposals"],
        saliency=upstream("proposals", "saliency", "saliency"),
        truth=PATHS["index_truth"],
    output:
        metrics=PATHS["proposals_metrics"],
        report=report(
            PATHS["proposals_report"],
            caption="../report/proposals.rst",
            category="Proposals",
        ),
    params:
        settings=variant_settings("proposals"),
        chain=config_chain("proposals"),
    threads: 2
    log:
        f"{LOGS}/proposals/{{variant}}.report.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/proposals_report.py"
