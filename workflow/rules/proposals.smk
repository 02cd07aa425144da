rule proposals:
    input:
        index=index_csv(),
        masks=upstream("proposals", "masks", f"{RESULTS}/masks/{{variant}}/masks.json"),
        saliency=upstream("proposals", "saliency", f"{RESULTS}/saliency/{{variant}}"),
    output:
        f"{RESULTS}/proposals/{{variant}}/proposals.json",
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
        index=index_csv(),
        proposals=f"{RESULTS}/proposals/{{variant}}/proposals.json",
        saliency=upstream("proposals", "saliency", f"{RESULTS}/saliency/{{variant}}"),
    output:
        metrics=f"{RESULTS}/proposals/{{variant}}/metrics.json",
        report=report(
            f"{RESULTS}/proposals/{{variant}}/report.md",
            caption="../report/proposals.rst",
            category="Proposals",
        ),
    params:
        settings=variant_settings("proposals"),
        chain=config_chain("proposals"),
        root=lambda wildcards: DATASET_ROOT,
    threads: 2
    log:
        f"{LOGS}/proposals/{{variant}}.report.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/proposals_report.py"
