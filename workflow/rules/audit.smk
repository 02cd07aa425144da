# Audit pages: HTML galleries of overlays for every intermediate mask.
rule audit_masks:
    input:
        index=index_csv(),
        masks=f"{RESULTS}/masks/{{variant}}/masks.json",
    output:
        report(
            f"{RESULTS}/audit/masks/{{variant}}/index.html",
            caption="../report/audit.rst",
            category="Audit",
            subcategory="masks",
        ),
    params:
        max_images=config.get("audit", {}).get("max_images", 12),
    threads: 1
    log:
        f"{LOGS}/audit/masks/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_proposals:
    input:
        index=index_csv(),
        proposals=f"{RESULTS}/proposals/{{variant}}/proposals.json",
        saliency=upstream("proposals", "saliency", f"{RESULTS}/saliency/{{variant}}"),
    output:
        report(
            f"{RESULTS}/audit/proposals/{{variant}}/index.html",
            caption="../report/audit.rst",
            category="Audit",
            subcategory="proposals",
        ),
    params:
        max_images=config.get("audit", {}).get("max_images", 12),
    threads: 1
    log:
        f"{LOGS}/audit/proposals/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_pseudolabels:
    input:
        index=index_csv(),
        labels=f"{RESULTS}/pseudolabels/{{variant}}",
    output:
        report(
            f"{RESULTS}/audit/pseudolabels/{{variant}}/index.html",
            caption="../report/audit.rst",
            category="Audit",
            subcategory="pseudolabels",
        ),
    params:
        max_images=config.get("audit", {}).get("max_images", 12),
    threads: 1
    log:
        f"{LOGS}/audit/pseudolabels/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"


rule audit_predict:
    input:
        index=index_csv(),
        labels=f"{RESULTS}/predict/{{variant}}",
        pseudolabels=upstream("train", "pseudolabels", f"{RESULTS}/pseudolabels/{{variant}}"),
    output:
        report(
            f"{RESULTS}/audit/predict/{{variant}}/index.html",
            caption="../report/audit.rst",
            category="Audit",
            subcategory="predictions",
        ),
    params:
        max_images=config.get("audit", {}).get("max_images", 12),
    threads: 1
    log:
        f"{LOGS}/audit/predict/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/audit.py"
