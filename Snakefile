# unseg: unsupervised segmentation from self-supervised ViT features.
# Run: snakemake --cores 2                                   the demo: config/config.yaml (synthetic dataset)
#      snakemake --cores 2 --configfile config/my-data.yaml  your run: your config alone, nothing of the demo
#      snakemake --cores 2 TARGET --configfile config/my-data.yaml   (targets before --configfile: it takes several)
import json
import os

from snakemake.utils import min_version

from unseg.config.schema import ConfigError, load_methods, validate_config

min_version("9.0")


# The demo config is loaded only when the command line names no config file: `--configfile` replaces it whole
# (Snakemake would otherwise merge the user's file into it, and the demo's dataset and variants would leak in).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The schema is workflow/schemas/config.schema.yaml plus one branch per registered method (unseg.config.schema); the
# config's plugins (your own methods) are imported first, so their settings are validated like the built-ins'.
try:
    load_methods(config.get("plugins", []))
    validate_config(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))
except (ConfigError, ImportError) as error:
    raise WorkflowError(f"config error: {error}")
# Every mapping in key order: Snakemake compares a rule's params as serialised, so the same settings written in
# another order (a config re-saved by a YAML tool) would otherwise re-run every stage.
canonical_config = json.loads(json.dumps(config, sort_keys=True))
config.clear()
config.update(canonical_config)


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/saliency.smk"
include: "workflow/rules/contrast.smk"
include: "workflow/rules/proposals.smk"
include: "workflow/rules/instances.smk"
include: "workflow/rules/pseudolabels.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/audit.smk"


check_owned_outputs(workflow.rules)


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    for line in where_to_look():
        print(line)
