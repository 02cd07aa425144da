# unseg: unsupervised segmentation from self-supervised ViT features.
# Run: snakemake --cores 2            (config/config.yaml, the embedded synthetic demo)
#      snakemake --cores 2 --configfile config/other.yaml
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/saliency.smk"
include: "workflow/rules/proposals.smk"
include: "workflow/rules/pseudolabels.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    for line in where_to_look():
        print(line)
