"""The method registries: light declarations (no torch until a method runs), plugins of every stage run through their
stage, the facet check, ``unseg methods``, and the generated config reference and marked blocks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from unseg.config.docs import config_reference, describe_methods, replace_marked_block, update_marked_block
from unseg.config.registry import REGISTRIES, STAGES, Registry
from unseg.config.schema import ConfigError, load_methods, validate_config

from helpers import HEAVY, ROOT, SCHEMA, variant


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          check=True)


def test_loading_validating_and_describing_every_method_imports_no_torch():
    result = _python(f"""
        import sys, yaml
        from unseg.config.schema import load_methods, validate_config
        from unseg.config.variants import check_variants, fused_variants
        from unseg.config.docs import config_reference, describe_methods
        from unseg.config.registry import REGISTRIES
        load_methods()
        config = yaml.safe_load(open("config/config.yaml"))
        validate_config(config, "workflow/schemas/config.schema.yaml")
        check_variants(config)
        [fused_variants(config, name) for name in config["features"]]
        describe_methods(); config_reference()
        assert REGISTRIES["train"].get("transfgu_bootstrap").attributes["teacher_student"]
        print(sorted(set({HEAVY!r}) & set(sys.modules)))
        REGISTRIES["masks"].get("spectral_multik").function  # resolving a function imports its stage
        print("unseg.stages.masks" in sys.modules)
    """)
    assert result.stdout.split("\n")[:2] == ["[]", "True"]


def test_a_declared_method_is_described_without_import_and_checked_when_resolved():
    registry = Registry("masks")
    method = registry.declare("half", "unseg_no_such_module:half", schema={"rows": {"type": "integer", "default": 2}},
                              description="The top half.", reads={"facet": "facet", "shape": "(h, w, D)"})
    assert method.location == "unseg_no_such_module:half" and method.settings({}) == {"rows": 2}
    with pytest.raises(ModuleNotFoundError):
        method.function
    # the decorator on a declared method attaches the function when the schema is the declared one
    with pytest.raises(TypeError, match="declared .* with another schema"):
        registry.register("half", schema={"rows": {"type": "integer", "default": 3}})(lambda grid, *, rows: grid)

    def half(grid, *, rows):
        return grid[:rows]

    registry.register("half", schema={"rows": {"type": "integer", "default": 2}})(half)
    assert registry.get("half").function is half and registry.get("half").description == "The top half."
    assert registry.get("half")(np.arange(5)).tolist() == [0, 1]
    with pytest.raises(TypeError, match=r"schema names \['columns'\]"):
        registry.register("other", schema={"columns": {"type": "integer"}})(half)


def test_a_method_given_a_facet_of_another_shape_is_refused_at_validation():
    config = {"dataset": {"name": "d", "root": "."},
              "saliency": {"bip": {"method": "spectral_bipartition", "features": "f", "facet": "attn"}}}
    with pytest.raises(ConfigError, match=r"saliency.bip.facet: saliency method 'spectral_bipartition' reads a "
                                          r"\(h, w, D\) facet, and 'attn' is \(heads, h, w\)"):
        validate_config(config, SCHEMA)
    config["saliency"]["bip"]["facet"] = "keys@6"
    validate_config(config, SCHEMA)
    # a method without a facet (masks from a folder) is not checked
    validate_config({"dataset": {"name": "d", "root": "."}, "saliency": {"m": {
        "method": "mask_folder", "features": "f", "path": "masks", "facet": "cls"}}}, SCHEMA)


# A plugin module of the user's, with one throw-away method per stage (loaded as the config's plugins: are).
PLUGIN = '''
import json
import numpy as np
from unseg.config.registry import register
from unseg.ops.spectral import GridMask
from unseg.stages.pseudolabels import PseudoLabels


@register("masks", "plugin_bright_half", schema={"channel": {"type": "integer", "default": 0}})
def bright_half(batch, *, channel):
    """Cells above their image's median of one channel."""
    return [[GridMask(grid[..., channel] > np.median(grid[..., channel]), k=0, cluster=0, component=0,
                      coherence=1.0)] for grid in batch.grids]


@register("saliency", "plugin_left_half", schema={})
def left_half(batch):
    """The left half of every grid is foreground."""
    maps = []
    for grid in batch.grids:
        soft = np.zeros(grid.shape[:2], dtype=np.float32)
        soft[:, : grid.shape[1] // 2] = 1.0
        maps.append(soft)
    return maps


@register("pseudolabels", "plugin_one_class", needs_proposals=False, schema={"label": {"type": "integer",
                                                                                        "default": 1}})
def one_class(inputs, *, label):
    """Every painted image wholly of one class."""
    maps = {name: np.full((4, 6), label, dtype=np.uint8) for name in inputs.painted.values()}
    return PseudoLabels(maps, [], {"images": len(maps)})


@register("train", "plugin_count", schema={"factor": {"type": "integer", "default": 1}})
def count(inputs, *, factor):
    """Counts the label pixels of each class, writes them as the model."""
    counts = np.zeros(inputs.num_classes, dtype=int)
    for path in inputs.label_paths.values():
        from unseg.core.io import read_label_png
        counts += np.bincount(read_label_png(path).ravel(), minlength=inputs.num_classes)
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    (inputs.out_dir / "model.json").write_text(json.dumps((factor * counts).tolist()))
    return {"pixels": int(factor * counts.sum())}


@register("contrast", "plugin_embeddings_path", schema={})
def embeddings_path(inputs):
    """Reports where the embeddings would go."""
    return {"embeddings": str(inputs.embeddings_path), "images": len(inputs.image_paths)}


@register("instances", "plugin_targets", schema={"scale": {"type": "number", "default": 1.0}})
def targets(inputs, *, scale):
    """Counts each image's targets."""
    return {name: scale * len(dets) for name, dets in inputs.detections.items()}
'''


def test_a_plugin_method_of_every_stage_runs_through_its_stage(tiny_store, tmp_path):
    from unseg.core.io import read_json, read_label_png, read_saliency
    from unseg.features.store import FeatureStore
    from unseg.stages.contrast import ContrastInputs, run_contrast
    from unseg.stages.instances.stage import run_instances_train
    from unseg.stages.masks import run_masks
    from unseg.stages.pseudolabels import run_pseudolabels
    from unseg.stages.saliency import run_saliency
    from unseg.stages.train import run_train

    (tmp_path / "lab_methods.py").write_text(PLUGIN)
    load_methods(["lab_methods.py"], base=tmp_path)
    names = {f"plugin_{part}" for part in ("bright_half", "left_half", "one_class", "count", "embeddings_path",
                                           "targets")}
    assert names == {name for stage in STAGES for name in REGISTRIES[stage].names() if name.startswith("plugin_")}
    store_path, image_paths = tiny_store
    store = FeatureStore(store_path)

    run_masks(store_path, tmp_path / "masks.json", variant("masks", method="plugin_bright_half", facet="keys"),
              progress=False)
    assert len(read_json(tmp_path / "masks.json")) == 3
    run_saliency(store_path, tmp_path / "saliency", variant("saliency", method="plugin_left_half", facet="keys"),
                 progress=False)
    for name in store.names:
        soft = read_saliency(tmp_path / "saliency", name)
        assert (soft[:, 0] > 0.5).all() and (soft[:, -1] < 0.5).all()
    names_by_id = {store.image_id(name): name for name in store.names}
    run_pseudolabels(None, store_path, None, names_by_id, tmp_path / "labels",
                     variant("pseudolabels", method="plugin_one_class", label=2, clusters=2), progress=False)
    assert (read_label_png(tmp_path / "labels" / "a.png") == 2).all()
    row = run_train(store_path, tmp_path / "labels", store.names, tmp_path / "train", 3,
                    variant("train", method="plugin_count", factor=2), progress=False)
    assert row == {"pixels": 2 * 3 * 24} and json.loads((tmp_path / "train" / "model.json").read_text()) == [0, 0, 144]
    inputs = ContrastInputs(store_path, image_paths, tmp_path / "saliency", tmp_path / "contrast",
                            tmp_path / "embeddings.zarr", {})
    assert run_contrast(inputs, variant("contrast", method="plugin_embeddings_path")) == {
        "embeddings": str(tmp_path / "embeddings.zarr"), "images": 3}
    (tmp_path / "targets.json").write_text(json.dumps([{"image_id": store.image_id("b"), "score": 1.0}] * 2))
    assert run_instances_train(store_path, tmp_path / "targets.json", names_by_id, tmp_path / "instances",
                               variant("instances", method="plugin_targets", scale=0.5), progress=False) == {
        "a": 0.0, "b": 1.0, "c": 0.0}


def test_unseg_methods_lists_every_method_with_its_settings_and_location(capsys):
    from unseg.cli import main

    assert main(["methods", "masks"]) == 0
    out = capsys.readouterr().out
    assert "masks spectral_multik  (unseg.stages.masks:spectral_multik)" in out
    assert '    solver_precision: one of: auto, bfloat16, float32 = "auto"  eigensolver' in out
    assert main(["methods", "--markdown", "--brief"]) == 0
    brief = capsys.readouterr().out.splitlines()
    assert brief[:2] == ["| stage | method | what it does |", "|---|---|---|"]
    assert "| masks | `spectral_multik` | Engstler et al. 2023: NJW spectral clustering of the tokens for every k, " \
           "every cluster (component) a mask. |" in brief
    assert len(brief) == 2 + sum(len(REGISTRIES[stage].names()) for stage in STAGES) + 7  # + the dataset formats
    assert main(["methods", "--brief", "--plugins"]) == 0  # (methods of plugins loaded earlier are listed too)
    assert main(["methods", "nostage"]) == 2


def test_the_committed_config_reference_is_current():
    """config/README.md is `unseg config-docs`' output: regenerate it after editing a schema or a declaration."""
    reference = config_reference()
    assert (ROOT / "config" / "README.md").read_text() == reference
    for key in ("`masks.{variant}.facet`", "`masks.{variant}.num_eigenvectors`", "`dataset.classes`",
                "`train.{variant}.round_settings`", "`audit.compare`"):
        assert key in reference, key


def test_a_marked_block_is_filled_in_and_checked(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- methods:start -->\nold\n<!-- methods:end -->\nend\n")
    listing = describe_methods(["masks"], markdown=True, brief=True)
    assert update_marked_block(readme, "methods", listing, check=True) and "old" in readme.read_text()
    assert update_marked_block(readme, "methods", listing)
    assert readme.read_text() == f"intro\n<!-- methods:start -->\n{listing}<!-- methods:end -->\nend\n"
    assert not update_marked_block(readme, "methods", listing)
    with pytest.raises(ValueError, match="no block <!-- other:start -->"):
        replace_marked_block(readme.read_text(), "other", "x")


def check_marked_block(path: Path, name: str = "methods") -> None:
    """For the lead's README test: fail when ``path``'s ``name`` block is not `unseg methods --markdown --brief`."""
    listing = describe_methods(markdown=True, brief=True, builtin_only=True)
    assert not update_marked_block(path, name, listing, check=True), \
        f"{path}: run `unseg methods --markdown --brief --into {path}`"


def test_the_readme_lists_every_built_in_method():
    check_marked_block(ROOT / "README.md")
