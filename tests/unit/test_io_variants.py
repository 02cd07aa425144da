import numpy as np
import pytest
from pycocotools import mask as mask_utils

from unseg.config.variants import VariantError, check_variants, follow, resolve_chain
from unseg.core.io import (
    atomic_output,
    decode_rle,
    encode_rle,
    read_label_png,
    voc_palette,
    write_label_png,
)


def test_rle_round_trip_and_area():
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:5, 3:8] = True
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 9]
    np.testing.assert_array_equal(decode_rle(rle), mask)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == 15


def test_label_png_round_trip_keeps_indices(tmp_path):
    labels = np.array([[0, 1, 2], [255, 20, 3]], dtype=np.uint8)
    write_label_png(tmp_path / "x.png", labels)
    np.testing.assert_array_equal(read_label_png(tmp_path / "x.png"), labels)
    assert tuple(voc_palette()[1]) == (128, 0, 0) and tuple(voc_palette()[15]) == (192, 128, 128)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "artifact.json"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


CONFIG = {
    "dataset": {"name": "d", "root": "r"},
    "features": {"f": {"backbone": "b", "weights": "random"}},
    "masks": {"m": {"features": "f"}},
    "saliency": {"s": {"features": "f"}},
    "proposals": {"p": {"masks": "m", "saliency": "s"}},
    "pseudolabels": {"k": {"proposals": "p", "features": "f", "clusters": 2}},
    "train": {"t": {"pseudolabels": "k", "features": "f"}},
    "evaluate": {"e": {"predictions": "t"}},
}


def test_resolve_chain_and_follow():
    chain = resolve_chain(CONFIG, "evaluate", "e")
    assert set(chain) == {"evaluate", "train", "pseudolabels", "proposals", "masks", "saliency", "features", "dataset"}
    assert follow(CONFIG, "evaluate", "e", "predictions", "pseudolabels", "proposals") == "p"
    assert resolve_chain(CONFIG, "masks", "m").keys() == {"masks", "features", "dataset"}


def test_check_variants_names_the_key():
    check_variants(CONFIG)
    broken = {**CONFIG, "proposals": {"p": {"masks": "nope", "saliency": "s"}}}
    with pytest.raises(VariantError, match=r"proposals\.p\.masks: no 'masks' variant named 'nope'"):
        check_variants(broken)
    with pytest.raises(VariantError, match="variant name"):
        check_variants({**CONFIG, "masks": {"bad/name": {"features": "f"}}})


def test_a_proposals_variant_may_name_a_second_saliency_map_for_its_components():
    config = {**CONFIG, "saliency": {"s": {"features": "f"}, "sharp": {"features": "f"}},
              "proposals": {"p": {"masks": "m", "saliency": "s", "components": "sharp"}}}
    check_variants(config)
    assert follow(config, "proposals", "p", "components") == "sharp"
    assert follow(CONFIG, "proposals", "p", "components") is None  # optional: left out, no components
    assert set(resolve_chain(config, "proposals", "p")["saliency"]) == {"s", "sharp"}
    with pytest.raises(VariantError, match=r"proposals\.p\.components: no 'saliency' variant named 'nope'"):
        check_variants({**config, "proposals": {"p": {"masks": "m", "saliency": "s", "components": "nope"}}})


def test_a_proposals_variant_may_vote_with_the_masks_of_other_variants():
    config = {**CONFIG, "masks": {"m": {"features": "f"}, "m2": {"features": "f"}, "m3": {"features": "f"}},
              "proposals": {"p": {"masks": "m", "saliency": "s", "votes": ["m2", "m3"], "score": "salient_votes"}}}
    check_variants(config)
    assert set(resolve_chain(config, "proposals", "p")["masks"]) == {"m", "m2", "m3"}
    assert set(resolve_chain(config, "evaluate", "e")["masks"]) == {"m", "m2", "m3"}
    with pytest.raises(ValueError, match=r"proposals\.p\.votes names a list"):
        follow(config, "proposals", "p", "votes")
    with pytest.raises(VariantError, match=r"proposals\.p\.votes: no 'masks' variant named 'nope'"):
        check_variants({**config, "proposals": {"p": {"masks": "m", "saliency": "s", "votes": ["m2", "nope"]}}})
    with pytest.raises(VariantError, match=r"proposals\.p\.votes: names its own masks variant 'm'"):
        check_variants({**config, "proposals": {"p": {"masks": "m", "saliency": "s", "votes": ["m2", "m"]}}})
    with pytest.raises(VariantError, match=r"proposals\.p\.score: salient_votes ranks voted masks"):
        check_variants({**config, "proposals": {"p": {"masks": "m", "saliency": "s", "score": "salient_votes"}}})


def test_pseudolabels_may_cluster_an_instances_variants_detections():
    config = {**CONFIG, "instances": {"i": {"proposals": "p", "features": "f"}},
              "pseudolabels": {"k": {"proposals": "i", "features": "f", "clusters": 2}}}
    check_variants(config)
    # the chain goes through the instance segmenter to the proposals it trained on; saliency is the proposals'
    assert set(resolve_chain(config, "pseudolabels", "k")) == {"pseudolabels", "instances", "proposals", "masks",
                                                               "saliency", "features", "dataset"}
    assert follow(config, "pseudolabels", "k", "proposals") == "i"
    assert follow(config, "pseudolabels", "k", "proposals", "saliency") == "s"
    assert follow(config, "evaluate", "e", "predictions", "pseudolabels", "proposals", "saliency") == "s"
    with pytest.raises(VariantError, match="instances.p: a proposals variant has that name too"):
        check_variants({**config, "instances": {"p": {"proposals": "p", "features": "f"}}})
    # an instances variant trains on proposals, not on another instances variant's detections
    with pytest.raises(VariantError, match=r"instances\.j\.proposals: no 'proposals' variant named 'i'"):
        check_variants({**config, "instances": {"i": {"proposals": "p", "features": "f"},
                                                "j": {"proposals": "i", "features": "f"}}})


def test_a_folders_digest_ignores_its_own_sidecar_but_not_its_content(tmp_path):
    from unseg.core.provenance import input_digest

    (tmp_path / "a.png").write_bytes(b"12345")
    (tmp_path / "provenance.json").write_text('{"run": {"wall_time_s": 0.1}}')
    before = input_digest(tmp_path)
    (tmp_path / "provenance.json").write_text('{"run": {"wall_time_s": 0.125}}')  # another run's times
    assert input_digest(tmp_path) == before
    (tmp_path / "a.png").write_bytes(b"123456")
    assert input_digest(tmp_path) != before


def validated(config: dict) -> dict:
    import copy
    from pathlib import Path

    from unseg.config.schema import load_methods, validate_config

    load_methods()
    return validate_config(copy.deepcopy(config), Path(__file__).parents[2] / "workflow/schemas/config.schema.yaml")


def test_facets_consumers_stores_exactly_what_the_variants_read():
    config = validated({**CONFIG, "features": {"f": {"backbone": "dino_vits16", "weights": "random",
                                                     "facets": "consumers"}}})
    check_variants(config)
    # masks and saliency read keys (their default facet); pseudolabels, train: tokens; evaluate has no k-means
    assert config["features"]["f"]["facets"] == ["keys", "tokens"]

    config = validated({**CONFIG, "features": {"f": {"backbone": "dino_vits16", "weights": "random",
                                                     "facets": "consumers"}},
                        "masks": {"m": {"features": "f", "facet": "values@-2"}},
                        "instances": {"i": {"proposals": "p", "features": "f", "rescore_facet": "queries"}},
                        "evaluate": {"e": {"predictions": "t", "facet": "values", "kmeans": {}}}})
    check_variants(config)
    assert config["features"]["f"]["facets"] == ["keys", "queries", "tokens", "values", "values@-2"]

    # TransFGU's object mode reads the attention prior of `features` and no facet; the crop store is not checked
    transfgu = validated({
        **CONFIG,
        "features": {"f": {"backbone": "dino_vits16", "weights": "random", "facets": "consumers"},
                     "c": {"backbone": "dino_vits16", "weights": "random", "crops": {}}},
        "pseudolabels": {"k": {"method": "transfgu", "features": "f", "crops": "c", "clusters": 2}},
        "train": {"t": {"pseudolabels": "k", "features": "f", "facet": "keys"}},
    })
    check_variants(transfgu)
    assert transfgu["features"]["f"]["facets"] == ["attn", "keys"]
    transfgu["features"]["c"]["fused"] = True  # crops: nothing to fuse
    with pytest.raises(VariantError, match=r"features\.c\.fused: a crops variant"):
        check_variants(transfgu)


def test_a_variant_reading_a_facet_its_store_lacks_is_a_config_error():
    config = validated({**CONFIG, "features": {"f": {"backbone": "dino_vits16", "weights": "random",
                                                     "facets": ["keys"]}}})
    with pytest.raises(VariantError, match=r"train\.t\.facet: reads facet 'tokens' of features\.f, which "
                                           r"stores \['keys'\]; add it to features\.f\.facets"):
        check_variants(config)
    nobody = validated({**CONFIG, "features": {"f": {"backbone": "dino_vits16", "weights": "random"},
                                               "unused": {"backbone": "dino_vits16", "weights": "random",
                                                          "facets": "consumers"}}})
    with pytest.raises(VariantError, match=r"features\.unused\.facets: consumers, but no variant reads this store"):
        check_variants(nobody)
    # a facet outside the enum of names is a schema error, naming the key
    from unseg.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"features\.f\.facets"):
        validated({**CONFIG, "features": {"f": {"backbone": "dino_vits16", "weights": "random", "facets": "all"}}})
