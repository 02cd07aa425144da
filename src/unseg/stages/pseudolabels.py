"""The pseudolabels stage: semantic label PNGs of every image from the proposals, with no human labels.

The built-in methods are declared in :mod:`unseg.methods.pseudolabels` (a plugin's with ``@register("pseudolabels",
name, schema=...)``, :mod:`unseg.config.registry`); a method
takes
:class:`PseudolabelInputs` and its settings as keywords and returns :class:`PseudoLabels`.

``mask_kmeans``, MaskDistill-style: each proposal gets a feature, L2-normalised, and k-means (faiss on the CPU, a torch
k-means on CUDA; the lowest inertia of several seeds) groups them into ``clusters`` pseudo-classes; each image's label
map paints its proposals in order of increasing score (the most confident mask wins overlaps) with ``cluster + 1``,
and 0 (background) elsewhere. The feature (``candidate_feature``) is

* ``mask_pooled`` — the mean of the stored tokens, weighted by how much of each token cell the mask covers (no image
  is read);
* ``masked_crop_cls`` — the CLS token of the backbone (the store's own, weights checked against its digest) on the
  masked crop: a square box around the mask (``crop_margin`` wider than its longer side), the pixels outside the
  mask set to the backbone's mean colour (zero after normalisation), resized to ``crop_resolution``. MaskDistill
  clusters "the outputs (i.e., CLS tokens)" of its candidates (README, Part 1 (i)).

The saliency filter lets through masks of background next to objects (a bipartition's foreground is generous), and
k-means would spend a pseudo-class on them. So k-means makes ``clusters + background_clusters`` clusters, and
the ``background_clusters`` whose centroids lie nearest the background prototype (the mean feature of the
non-salient cells of all images) are painted as background. On the synthetic default this lifts the pseudo-label
mIoU from about 47 % to about 73 % (see the closing note of the walking-skeleton issue).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unseg.config.registry import REGISTRIES
from unseg.core.devices import resolve_device
from unseg.core.geometry import grid_to_image, image_to_grid
from unseg.core.io import (
    atomic_output,
    decode_rle,
    read_image,
    read_json,
    read_saliency,
    write_json,
    write_label_png,
)
from unseg.features.preprocess import normalize_batch
from unseg.features.store import FeatureStore
from unseg.ops.cluster import kmeans_over_seeds


def mask_feature(features: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Coverage-weighted mean of a token grid, L2-normalised.

    Args:
        features: (h, w, D) float.
        coverage: (h, w) float in [0, 1], the fraction of each cell inside the mask.

    Returns:
        (D,) float32 unit vector (zeros when the mask covers nothing).
    """
    weights = coverage.reshape(-1, 1).astype(np.float32)
    total = float(weights.sum())
    if total <= 0:
        return np.zeros(features.shape[-1], dtype=np.float32)
    mean = (features.reshape(-1, features.shape[-1]) * weights).sum(axis=0) / total
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def masked_crop(image: np.ndarray, mask: np.ndarray, margin: float, fill: np.ndarray) -> np.ndarray:
    """The square crop of ``image`` around ``mask``, the pixels outside the mask (and beyond the image) ``fill``.

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool, not empty.
        margin: the box side is (1 + margin) × the longer side of the mask's bounding box, centred on it.
        fill: (3,) uint8 colour.

    Returns:
        (S, S, 3) uint8.
    """
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(1, int(round(max(bottom - top, right - left) * (1 + margin))))
    top = (top + bottom - side) // 2
    left = (left + right - side) // 2
    crop = np.empty((side, side, 3), dtype=np.uint8)
    crop[:] = fill
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, image.shape[0]), min(left + side, image.shape[1])
    window = mask[src_top:src_bottom, src_left:src_right]
    target = crop[src_top - top : src_bottom - top, src_left - left : src_right - left]
    target[window] = image[src_top:src_bottom, src_left:src_right][window]
    return crop


class MaskedCropEncoder:
    """CLS tokens of masked crops (:func:`masked_crop`) from a feature store's backbone, a batch at a time.

    ``encode`` returns (M, D) float32 L2-normalised rows, in order.
    """

    def __init__(self, store: FeatureStore, resolution: int, margin: float, batch_size: int, device):
        from unseg.training.finetune import load_store_backbone

        model, self.spec = load_store_backbone(store.attrs["backbone"], store.attrs["weights"],
                                               store.attrs["weights_digest"])
        self.device = device
        self.model = model.to(device).eval()
        self.resolution = resolution - resolution % self.spec.patch_size
        self.margin, self.batch_size = margin, batch_size
        self.fill = np.round(np.array(self.spec.mean) * 255).astype(np.uint8)

    def encode(self, crops: list[np.ndarray]) -> np.ndarray:
        rows = []
        for start in range(0, len(crops), self.batch_size):
            batch = np.stack([np.asarray(Image.fromarray(crop).resize((self.resolution,) * 2, Image.BICUBIC))
                              for crop in crops[start : start + self.batch_size]])
            pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
            with torch.inference_mode():
                cls = self.model.forward_features(normalize_batch(pixels, self.spec.mean, self.spec.std))[:, 0]
            rows.append(torch.nn.functional.normalize(cls.float(), dim=1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.spec.embed_dim), dtype=np.float32)

    def crops_of(self, image: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray]:
        return [masked_crop(image, mask, self.margin, self.fill) for mask in masks]


def assign_background_clusters(
    centroids: np.ndarray, background_prototype: np.ndarray, num_background: int
) -> np.ndarray:
    """Map k-means clusters to labels: the ``num_background`` clusters most similar (cosine) to the background
    prototype become 0, the others 1..K-num_background in their original order.

    Args:
        centroids: (K, D) float.
        background_prototype: (D,) float.

    Returns:
        (K,) int64 label of each cluster.
    """
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-12)
    similarity = unit @ (background_prototype / max(float(np.linalg.norm(background_prototype)), 1e-12))
    background = set(np.argsort(-similarity, kind="stable")[:num_background].tolist())
    labels, next_label = np.zeros(len(centroids), dtype=np.int64), 1
    for cluster in range(len(centroids)):
        if cluster not in background:
            labels[cluster], next_label = next_label, next_label + 1
    return labels


def paint_label_map(
    masks: list[np.ndarray], scores: list[float], labels: list[int], shape: tuple[int, int]
) -> np.ndarray:
    """Paint masks into an (H, W) uint8 map, lowest score first so the most confident mask wins; 0 elsewhere."""
    label_map = np.zeros(shape, dtype=np.uint8)
    for index in np.argsort(scores, kind="stable"):
        label_map[masks[index]] = labels[index]
    return label_map


@dataclass(frozen=True)
class PseudolabelInputs:
    """What a pseudo-label method reads.

    Attributes:
        proposals: the proposals variant's COCO results (RLE segmentations, ``score``), of every image.
        store: the feature store of the variant's ``features``; ``facet`` is the facet to read from it.
        saliency_dir: the saliency maps the proposals were filtered with (:func:`unseg.core.io.read_saliency`).
        names_by_id: image id → name, of every image whose proposals are clustered.
        support_ids: the ids among them of the support set (MaskDistill): clustered, never painted.
        clusters: number of pseudo-classes (object classes; background, label 0, comes on top).
        source: where the proposals came from, for messages.
        image_paths: image name → image file, for methods that read the images (``masked_crop_cls``).
        crops: the crops store of the variant's ``crops`` features variant (:mod:`unseg.features.crops`), for
        ``transfgu``.
    """

    proposals: list[dict]
    store: FeatureStore
    facet: str
    saliency_dir: Path | None
    names_by_id: Mapping[int, str]
    clusters: int
    source: str = "proposals"
    progress: bool = True
    support_ids: frozenset[int] = frozenset()
    image_paths: Mapping[str, str | Path] | None = None
    crops: FeatureStore | None = None

    @property
    def painted(self) -> dict[int, str]:
        """image id → name of the images that get a label map: all but the support set."""
        return {image_id: name for image_id, name in self.names_by_id.items() if image_id not in self.support_ids}


@dataclass
class PseudoLabels:
    """What a pseudo-label method returns: per image name an (H0, W0) uint8 label map (0 background,
    1..clusters pseudo-classes, 255 ignored), the labelled detections (COCO results with ``category_id``), a
    summary for the log and, for methods with per-class scores, each image's soft maps on the token grid (channel 0
    background; the label is their arg max), which trainers may read instead of the one-hot labels."""

    label_maps: dict[str, np.ndarray]
    detections: list[dict]
    summary: dict[str, Any] = field(default_factory=dict)
    soft_maps: dict[str, np.ndarray] | None = None  # name → (clusters + 1, h, w) scores on the token grid


def mask_kmeans(inputs: PseudolabelInputs, *, background_clusters, min_score, seed, num_restarts,
                device, candidate_feature, crop_resolution, crop_margin, crop_batch_size) -> PseudoLabels:
    """MaskDistill-style: k-means of coverage-weighted proposal features into pseudo-classes, background-like
    clusters painted as background, the most confident mask on top (module docstring)."""
    store, facet = inputs.store, inputs.facet
    proposals = [det for det in inputs.proposals if det["score"] >= min_score and int(det["image_id"]) in
                 inputs.names_by_id]
    total_clusters = inputs.clusters + background_clusters
    if len(proposals) < total_clusters:
        raise ValueError(
            f"{inputs.source}: {len(proposals)} proposals score >= {min_score}, too few for {total_clusters} "
            f"k-means clusters ({inputs.clusters} 'clusters' + {background_clusters} 'background_clusters'); lower "
            "'clusters', 'background_clusters' or 'min_score', or loosen the proposal filter"
        )
    device = resolve_device(device)
    by_image: dict[int, list[int]] = {}
    for position, det in enumerate(proposals):
        by_image.setdefault(int(det["image_id"]), []).append(position)
    features, background = [None] * len(proposals), []
    encoder = None
    if candidate_feature == "masked_crop_cls":
        if inputs.image_paths is None:
            raise ValueError("pseudolabels candidate_feature: masked_crop_cls reads the images; no image paths given")
        encoder = MaskedCropEncoder(store, crop_resolution, crop_margin, crop_batch_size, device)
    for image_id, name in tqdm(inputs.names_by_id.items(), desc=f"candidate features ({candidate_feature})",
                               unit="img", disable=not inputs.progress):
        geometry, positions = store.geometry(name), by_image.get(image_id, [])
        salient = read_saliency(inputs.saliency_dir, name) > 0.5
        masks = [decode_rle(proposals[p]["segmentation"]) for p in positions]
        if encoder is None:
            grid = store.facet(name, facet)
            background.append(mask_feature(grid, 1.0 - image_to_grid(salient, geometry)))
            for position, mask in zip(positions, masks):
                features[position] = mask_feature(grid, image_to_grid(mask, geometry))
        else:
            image = read_image(inputs.image_paths[name])
            regions = masks + ([~salient] if (~salient).any() else [])
            encoded = encoder.encode(encoder.crops_of(image, regions))
            for position, row in zip(positions, encoded):
                features[position] = row
            if len(encoded) > len(positions):
                background.append(encoded[-1])
    clusters, centroids, inertias = kmeans_over_seeds(np.stack(features), total_clusters,
                                                      range(seed, seed + num_restarts), device)
    prototype = np.mean(background, axis=0) if background else np.zeros_like(centroids[0])  # all salient: none
    labels = assign_background_clusters(centroids, prototype, background_clusters)[clusters]

    label_maps = {}
    for image_id, name in sorted(inputs.painted.items()):
        positions = by_image.get(image_id, [])
        label_map = paint_label_map(
            [decode_rle(proposals[p]["segmentation"]) for p in positions], [proposals[p]["score"] for p in positions],
            [int(labels[p]) for p in positions], tuple(store.geometry(name).original_size),
        )
        label_maps[name] = label_map
    return PseudoLabels(
        label_maps,
        [{**det, "category_id": int(labels[i])} for i, det in enumerate(proposals)
         if int(det["image_id"]) not in inputs.support_ids],
        {"num_proposals": len(inputs.proposals), "num_clustered": len(proposals),
         "num_support_images": len(inputs.support_ids),
         "label_sizes": np.bincount(labels, minlength=inputs.clusters + 1).tolist(),
         "inertia": min(inertias.values()), "inertia_by_seed": inertias, "kept_seed": min(inertias, key=inertias.get),
         "kmeans": "torch" if device.type == "cuda" else "faiss", "candidate_feature": candidate_feature},
    )


def transfgu(inputs: PseudolabelInputs, *, mode, background_concepts, foreground_fraction, background_fraction,
             background_threshold, gradient_mass, seed, num_restarts, device) -> PseudoLabels:
    """TransFGU's top-down pseudo-labels (:mod:`unseg.stages.transfgu`): concepts by k-means over the crops' CLS tokens,
    each image's Grad-CAM response map per concept, the arg max with Eq. 8's background."""
    from unseg.features.preprocess import preprocess_image
    from unseg.stages.transfgu import (
        ConceptCam,
        box_coverage,
        foreground_prior,
        response_maps,
        soft_labels,
        split_crops,
    )
    from unseg.training.finetune import load_store_backbone

    if inputs.crops is None:
        raise ValueError("pseudolabels method transfgu reads the crops of a features variant with 'crops:' "
                         "settings; name it in the variant's 'crops' key")
    if inputs.image_paths is None:
        raise ValueError("pseudolabels method transfgu reads the images (Grad-CAM); no image paths given")
    store, crops = inputs.store, inputs.crops
    for key in ("backbone", "weights_digest"):
        if crops.attrs[key] != store.attrs[key]:
            raise ValueError(f"pseudolabels transfgu: the crops store {str(crops.path)!r} was made with {key} "
                             f"{crops.attrs[key]!r}, the features store with {store.attrs[key]!r}; concepts and "
                             "Grad-CAM must come from one backbone")
    if mode != "object" and background_concepts:
        raise ValueError(f"pseudolabels transfgu: background_concepts applies to mode 'object', not {mode!r}")
    foreground_concepts = inputs.clusters - background_concepts
    if foreground_concepts < 1:
        raise ValueError(f"pseudolabels transfgu: background_concepts {background_concepts} leaves no foreground "
                         f"concept of clusters {inputs.clusters}")
    device_ = resolve_device(device)
    names = sorted(inputs.names_by_id.values())

    groups: dict[str, list[np.ndarray]] = {"foreground": [], "background": []}
    counts = {"crops": 0, "foreground": 0, "background": 0}
    for name in tqdm(names, desc="transfgu crop groups", unit="img", disable=not inputs.progress):
        tokens, boxes = crops.facet(name, "crop_cls"), crops.facet(name, "crop_boxes")
        counts["crops"] += len(tokens)
        if mode == "object":
            if not store.has(name, "attn"):
                raise ValueError(f"pseudolabels transfgu: mode 'object' reads the 'attn' facet (the foreground "
                                 f"prior), which store {str(store.path)!r} lacks; add it to the variant's facets")
            foreground, background = split_crops(box_coverage(foreground_prior(store.facet(name, "attn")), boxes),
                                                 foreground_fraction, background_fraction)
        else:
            foreground, background = np.ones(len(tokens), dtype=bool), np.zeros(len(tokens), dtype=bool)
        groups["foreground"].append(tokens[foreground])
        groups["background"].append(tokens[background])
        counts["foreground"] += int(foreground.sum())
        counts["background"] += int(background.sum())
    concepts, inertias = [], {}
    for group, count in (("foreground", foreground_concepts), ("background", background_concepts)):
        if not count:
            continue
        points = np.concatenate(groups[group])
        if len(points) < count:
            raise ValueError(f"pseudolabels transfgu: {len(points)} {group} crops, too few for {count} concepts; "
                             "lower 'clusters' (or background_concepts), or add crop scales")
        _, centroids, group_inertias = kmeans_over_seeds(points, count, range(seed, seed + num_restarts), device_)
        concepts.append(centroids)
        inertias[group] = min(group_inertias.values())

    model, spec = load_store_backbone(store.attrs["backbone"], store.attrs["weights"], store.attrs["weights_digest"])
    cam = ConceptCam(model.to(device_))
    concept_tensor = torch.from_numpy(np.concatenate(concepts)).float().to(device_)
    label_maps, soft_maps = {}, {}
    for name in tqdm(sorted(inputs.painted.values()), desc="transfgu Grad-CAM", unit="img",
                     disable=not inputs.progress):
        geometry = store.geometry(name)
        image = preprocess_image(read_image(inputs.image_paths[name]), geometry, spec.mean, spec.std)[None]
        attention, gradients = cam.attention_and_gradients(image.to(device_), concept_tensor, geometry.grid_size)
        soft = soft_labels(response_maps(attention, gradients, gradient_mass), mode != "scene", background_threshold)
        soft_maps[name] = soft.numpy().astype(np.float16)
        label_maps[name] = grid_to_image(soft.numpy(), geometry).argmax(0).astype(np.uint8)
    sizes = np.bincount(np.concatenate([labels.ravel() for labels in label_maps.values()]),
                        minlength=inputs.clusters + 1) if label_maps else np.zeros(inputs.clusters + 1, np.int64)
    return PseudoLabels(label_maps, [], {
        "mode": mode, "num_crops": counts["crops"], "foreground_crops": counts["foreground"],
        "background_crops": counts["background"], "concepts": {"foreground": foreground_concepts,
                                                               "background": background_concepts},
        "inertia": inertias, "label_pixels": sizes.tolist(),
        "kmeans": "torch" if device_.type == "cuda" else "faiss"}, soft_maps)


def run_pseudolabels(
    proposals_json: str | Path | None,
    store_path: str | Path,
    saliency_dir: str | Path,
    names_by_id: Mapping[int, str],
    out_dir: str | Path,
    settings: Mapping[str, Any],
    progress: bool = True,
    support_ids: frozenset[int] | set[int] = frozenset(),
    image_paths: Mapping[str, str | Path] | None = None,
    crops_store: str | Path | None = None,
) -> dict:
    """Pseudo-labels of every image by the variant's method → ``out_dir/{name}.png``, ``out_dir/pseudolabels.json``
    (the labelled detections: ``category_id`` 0 background, 1..clusters), ``out_dir/summary.json`` (the method's
    summary: counts, cluster sizes, every k-means seed's inertia) and, for a method with soft maps,
    ``out_dir/soft/{name}.npy`` ((clusters + 1, h, w) float16 on the token grid), written as one atomic folder.

    Args:
        proposals_json: the proposals (None for a method registered with ``needs_proposals=False``).
        saliency_dir: their saliency maps (None likewise).
        crops_store: the crops store (:mod:`unseg.features.crops`) of a method that clusters crops (``transfgu``).
        settings: the pseudolabels variant: ``method``, ``facet``, ``clusters`` and the method's own settings.
        support_ids: ids (of ``names_by_id``) of the support set: their proposals join the clustering, but they get
            no label map (MaskDistill's support set, "used in the clustering only").

    Returns:
        the method's summary (counts, cluster sizes, ...).
    """
    method = REGISTRIES["pseudolabels"].get(settings["method"])
    if method.attributes.get("needs_proposals", True) and proposals_json is None:
        raise ValueError(f"pseudolabels method {method.name!r} labels proposals: name a proposals variant in the "
                         "variant's 'proposals' key")
    inputs = PseudolabelInputs(read_json(proposals_json) if proposals_json else [], FeatureStore(store_path),
                               settings["facet"], Path(saliency_dir) if saliency_dir else None, dict(names_by_id),
                               int(settings["clusters"]), str(proposals_json), progress, frozenset(support_ids),
                               image_paths, FeatureStore(crops_store) if crops_store else None)
    result = method(inputs, settings=settings)
    painted = set(inputs.painted.values())
    missing = sorted(painted - set(result.label_maps))
    extra = sorted(set(result.label_maps) - painted)
    if extra:
        raise ValueError(f"pseudolabels method {method.name!r} painted support-set images {extra[:3]}")
    if missing:
        raise ValueError(f"pseudolabels method {method.name!r} gave no label map for {missing[:3]}")
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in sorted(painted):
            write_label_png(tmp / f"{name}.png", result.label_maps[name], atomic=False)
        write_json(tmp / "pseudolabels.json", result.detections, indent=None)
        write_json(tmp / "summary.json", result.summary)
        if result.soft_maps is not None:
            (tmp / "soft").mkdir()
            for name in sorted(painted):
                np.save(tmp / "soft" / f"{name}.npy", result.soft_maps[name].astype(np.float16))
    return result.summary
