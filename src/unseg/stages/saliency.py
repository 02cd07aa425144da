"""The saliency stage: a soft foreground map of every image → ``saliency/{variant}/{name}.png``.

Artifact: one PNG per image, uint8 = round(255 × soft foreground), at the original resolution; foreground is
``value > 127`` (read back with :func:`unseg.core.io.read_saliency`).

The built-in methods are declared in :mod:`unseg.methods.saliency` (a plugin's with ``@register("saliency", name,
schema=...)``, :mod:`unseg.config.registry`). A method takes a
:class:`SaliencyBatch` and its settings as keywords and returns, per image, an
(h, w) float map in [0, 1] on the token grid; the runner upsamples it bilinearly to the image. A method registered
with ``pixel_maps=True`` returns maps at the image's own size instead (``mask_folder``: masks made elsewhere). A
method registered with ``dataset_level=True`` (``foreground_head``: a head trained across the dataset) takes a
:class:`SaliencyDataset` instead and yields ``(name, grid map)`` for every image.

The stage's ``refine`` setting (any method): ``crf`` refines each map at the image's size with a dense CRF on the
image (:func:`refine_with_crf`), the refinement step FOUND and SelfMask put after their heads. Its ``threshold``
setting then says where the stored map splits: ``split`` keeps the method's own 0.5; ``otsu`` moves each image's Otsu
threshold of its map to 0.5 (:func:`split_at`, a monotone remap, so the soft ordering is kept and every consumer's
``> 0.5`` reads the new split).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from unseg.config.registry import REGISTRIES
from unseg.core.devices import resolve_device
from unseg.core.geometry import ResizeGeometry, grid_to_image, image_to_grid
from unseg.core.io import atomic_output, read_image, read_label_png, write_json
from unseg.core.provenance import code_version
from unseg.core.retry import in_halves_on_oom
from unseg.core.reuse import link_or_copy, result_key, reuse_folder
from unseg.features.store import FeatureStore
from unseg.ops.cluster import kmeans
from unseg.ops.crf import CrfParams, dense_crf
from unseg.ops.eigensolver import grid_spectra, pass_dtype
from unseg.ops.spectral import bipartition_saliency, foreground_side
from unseg.training.engine import TrainingTask, run_training


@dataclass(frozen=True)
class SaliencyBatch:
    """What a saliency method sees of one batch: ``names``, per image the (h, w, D) float32 ``grids`` of the
    variant's facet, the torch ``device`` and whether this is the run's ``first`` batch."""

    names: Sequence[str]
    grids: Sequence[np.ndarray]
    device: str | None = None
    first: bool = True
    image_sizes: Sequence[tuple[int, int]] = ()  # (H0, W0) per image, as the index has it


@dataclass(frozen=True)
class SaliencyDataset:
    """What a ``dataset_level`` method sees: the feature ``store``, the ``facet`` it reads, the stage's
    ``batch_size`` (images per call of a per-image method it runs), the torch ``device``, ``extras``: a folder inside
    the variant's output for what the method keeps beside the maps (its model, its training targets), and whether to
    show ``progress``."""

    store: FeatureStore
    facet: str
    batch_size: int
    device: str | None
    extras: Path
    progress: bool = True


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (1979) of values in [0, 1]: the bin edge that maximises the between-class variance of a
    ``bins``-bin histogram; a constant map gives 0.5.

    Args:
        values: any-shape float array in [0, 1].

    Returns:
        t in (0, 1): the classes are ``values <= t`` and ``values > t``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.max() - values.min() < 1e-12:
        return 0.5
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)[:-1]  # class sizes for a cut after bin i (i < bins - 1)
    above = counts.sum() - below
    sum_below = np.cumsum(counts * centres)[:-1]
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (np.sum(counts * centres) - sum_below) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def split_at(soft: np.ndarray, threshold: float) -> np.ndarray:
    """Monotone piecewise-linear remap of a soft map in [0, 1] that sends ``threshold`` to 0.5 (and keeps 0 and 1),
    so that ``> 0.5`` afterwards is ``> threshold`` before. Same shape, float32."""
    soft = np.asarray(soft, dtype=np.float32)
    threshold = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    return np.where(soft > threshold, 0.5 + 0.5 * (soft - threshold) / (1 - threshold),
                    0.5 * soft / threshold).astype(np.float32)


def refine_with_crf(image: np.ndarray, soft: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """A soft foreground map refined by a dense CRF on its image (:func:`unseg.ops.crf.dense_crf` with MaskContrast's
    kernels): background 1 − s and foreground s are the two classes' unaries, the returned map is the foreground's
    marginal, so edges snap to the image's colour boundaries (SelfMask, FOUND: their post-processing step).

    Args:
        image: (H, W, 3) uint8.
        soft: (H, W) float foreground probability in [0, 1] at the image's size.

    Returns:
        (H, W) float32 refined foreground probability.
    """
    soft = np.clip(np.asarray(soft, np.float32), 0.0, 1.0)
    return dense_crf(image, np.stack([1.0 - soft, soft]), params)[1]


THRESHOLD_RULES = {"split": lambda soft: soft, "otsu": lambda soft: split_at(soft, otsu_threshold(soft))}


def spectral_bipartition(batch: SaliencyBatch, *, solver_precision, partition) -> list[np.ndarray]:
    """Engstler et al. 2023 (after Deep Spectral Methods): the k = 2 bipartition of the token affinity; the side
    touching the image border less is foreground. Soft map: 0.5 + 0.5 × generalised Fiedler vector / its max
    magnitude, oriented by that border rule; with ``partition: kmeans``, 0.5 + 0.5 × (d_bg − d_fg) / (d_bg + d_fg)
    of each token's distances to the two k-means centroids."""
    if batch.first:
        print(f"saliency: eigensolver passes in {pass_dtype(solver_precision, batch.device)} "
              f"(solver_precision: {solver_precision})", file=sys.stderr)
    spectra = grid_spectra(list(batch.grids), 2, device=batch.device, precision=solver_precision)
    if partition == "kmeans":
        return [kmeans_bipartition(vectors, grid.shape[:2]) for grid, (vectors, _) in zip(batch.grids, spectra)]
    return [bipartition_saliency(grid, eigenvectors=vectors, degree=degree)[1]
            for grid, (vectors, degree) in zip(batch.grids, spectra)]


def kmeans_bipartition(eigenvectors: np.ndarray, grid_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(h, w) float32 soft map of the k = 2 spectral clustering of one image: 2-means on the row-normalised first
    two L_sym eigenvectors (``eigenvectors`` (h·w, >= 2)); the cluster touching the border less is foreground, the
    soft value 0.5 + 0.5 × (d_bg − d_fg) / (d_bg + d_fg) is above 0.5 exactly on it."""
    embedding = eigenvectors[:, :2] / np.linalg.norm(eigenvectors[:, :2], axis=1, keepdims=True).clip(min=1e-12)
    labels, centroids, _ = kmeans(embedding.astype(np.float32), 2, seed=seed, num_restarts=5)
    foreground = int(not foreground_side(labels.reshape(grid_size) == 0))
    distances = np.linalg.norm(embedding[:, None, :] - centroids[None], axis=2)
    d_fg, d_bg = distances[:, foreground], distances[:, 1 - foreground]
    return (0.5 + 0.5 * (d_bg - d_fg) / np.maximum(d_bg + d_fg, 1e-12)).reshape(grid_size).astype(np.float32)


def border_background(batch: SaliencyBatch) -> list[np.ndarray]:
    """Background prior (Wei et al., ECCV 2012, "Geodesic saliency using background priors"; the idea FOUND, Siméoni
    et al. CVPR 2023, builds on: observe the background to find the object): the image border is mostly background,
    so a token is background as much as it resembles the border tokens. Score per token: 1 − the mean of its
    cosine similarities to every token of the outermost ring, min-max scaled per image; the soft map is that
    score split at its own Otsu threshold (:func:`split_at`), so > 0.5 is foreground."""
    maps = []
    for grid in batch.grids:
        unit = np.asarray(grid, dtype=np.float32)
        unit = unit / np.linalg.norm(unit, axis=-1, keepdims=True).clip(min=1e-12)
        height, width, dim = unit.shape
        ring = np.concatenate([unit[0], unit[-1], unit[1:-1, 0], unit[1:-1, -1]]) if height > 1 and width > 1 \
            else unit.reshape(-1, dim)
        score = 1.0 - np.mean(unit.reshape(-1, dim) @ ring.T, axis=1).reshape(height, width)
        span = float(score.max() - score.min())
        score = (score - score.min()) / span if span > 1e-12 else np.full_like(score, 0.5)
        maps.append(split_at(score, otsu_threshold(score)))
    return maps


def mask_folder(batch: SaliencyBatch, *, path) -> list[np.ndarray]:
    """Masks made elsewhere, one PNG per image: grey values / 255, or a 0/1 (or palette 0/1) mask as is."""
    maps = []
    for name, size in zip(batch.names, batch.image_sizes):
        file = Path(path) / f"{name}.png"
        if not file.is_file():
            raise FileNotFoundError(f"saliency.mask_folder: no mask {str(file)!r} for image {name!r}")
        values = read_label_png(file).astype(np.float32)
        if values.shape != tuple(size):
            raise ValueError(f"saliency.mask_folder: {str(file)} is {values.shape[1]}x{values.shape[0]}, its image "
                             f"{size[1]}x{size[0]}")
        maps.append(values if values.max(initial=0) <= 1 else values / 255.0)
    return maps


def foreground_head(data: SaliencyDataset, *, teacher, teacher_settings, iterations, batch_images, lr,
                    lr_step, lr_gamma, teacher_iterations, self_weight, train_images,
                    seed) -> Iterator[tuple[str, np.ndarray]]:
    """A light foreground head trained across the whole dataset (FOUND, Siméoni et al. CVPR 2023, section 3.2 and
    its configs/found_DUTS-TR.yaml; SelfMask's idea of learning saliency from unsupervised masks).

    The teacher method's maps of every image (kept in ``extras/teacher/``) become per-token binary targets (a token is
    foreground when more than half its footprint is > 0.5). A 1×1 convolution over the standardised frozen tokens learns
    them with binary cross-entropy for ``teacher_iterations`` iterations of ``batch_images`` images, then (when
    ``teacher_iterations`` is set) trains on its own binarised predictions (weight ``self_weight``), AdamW with a step
    schedule, FOUND's values throughout. Departures from FOUND: tokens come from the feature store (no image
    augmentation), inputs are standardised (dataset mean and std per channel), its bilateral-solver loss is left out,
    and so its self-training is off by default. The head, its statistics and the loss curve are kept in ``extras/``.

    Yields:
        (name, (h, w) float32 sigmoid foreground probability on the token grid) for every image of the store.
    """
    teacher_method = REGISTRIES["saliency"].get(teacher)
    if teacher_method.attributes.get("dataset_level"):
        raise ValueError(f"saliency.foreground_head: teacher {teacher!r} is itself trained across the dataset; "
                         "name a per-image method (e.g. border_background or spectral_bipartition)")
    unknown = sorted(set(teacher_settings) - set(teacher_method.schema))
    if unknown:
        raise ValueError(f"saliency.foreground_head.teacher_settings: {unknown} are not settings of {teacher!r} "
                         f"(it takes {sorted(teacher_method.schema)})")
    teacher_iterations = iterations if teacher_iterations is None else teacher_iterations
    store, device = data.store, resolve_device(data.device)
    names = store.names
    teacher_dir = data.extras / "teacher"
    teacher_dir.mkdir(parents=True, exist_ok=True)
    targets: dict[str, torch.Tensor] = {}
    for name, soft in method_maps(teacher_method, teacher_method.settings(teacher_settings), store, data.facet,
                                  data.batch_size, data.device, data.progress, f"teacher {teacher}"):
        save_soft_map(soft, teacher_dir / f"{name}.png")
        targets[name] = torch.from_numpy(image_to_grid(soft > 0.5, store.geometry(name)) > 0.5).float().reshape(-1)
    generator = np.random.default_rng(seed)
    trained = [names[i] for i in sorted(generator.permutation(len(names))[:train_images])]
    tokens = TokenTable(store, trained, data.facet, device)
    target_rows = torch.cat([targets[name] for name in trained]).to(device)
    torch.manual_seed(seed)
    head = torch.nn.Linear(tokens.dim, 1).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step, gamma=lr_gamma)
    task = ForegroundHeadTraining(head, tokens, target_rows, generator, batch_images=batch_images,
                                  teacher_iterations=teacher_iterations, self_weight=self_weight)
    # Inside the stage's temporary folder, which an interrupted job does not leave: no last.pt (settings=None).
    rows = run_training(task, head, optimizer, data.extras, epochs=iterations, settings=None, scheduler=scheduler,
                        config={"facet": data.facet, "teacher": teacher}, progress=data.progress,
                        desc="foreground head", unit="it", model_file="head.pt")
    curve = [{**row, "loss": round(row["loss"], 5)} for row in rows
             if row["iteration"] % 10 == 0 or row["iteration"] == iterations - 1]
    head.eval()
    agreement = []
    with torch.no_grad():
        for name in names:
            grid = torch.from_numpy(store.facet(name, data.facet)).to(device)
            inputs = (grid.reshape(-1, tokens.dim).half().float() - tokens.mean) / tokens.std
            probability = torch.sigmoid(head(inputs)).squeeze(1)
            agreement.append(float(((probability > 0.5).float() == targets[name].to(device)).float().mean()))
            yield name, probability.reshape(grid.shape[:2]).cpu().numpy().astype(np.float32)
    write_json(data.extras / "training.json", {"curve": curve, "images": len(names), "trained_on": len(trained),
                                               "teacher_agreement": float(np.mean(agreement))})


class ForegroundHeadTraining(TrainingTask):
    """:func:`foreground_head`'s part of the training engine: one engine epoch per iteration (a batch of
    ``batch_images`` images' token rows, drawn from a seeded permutation of the trained images, redrawn when it runs
    out), binary cross-entropy against the teacher's targets for the first ``teacher_iterations``, then against the
    head's own binarised predictions (× ``self_weight``)."""

    log_fields = ("iteration", "loss", "target")

    def __init__(self, head: torch.nn.Module, tokens: TokenTable, target_rows: torch.Tensor,
                 generator: np.random.Generator, *, batch_images: int, teacher_iterations: int, self_weight: float):
        self.head, self.tokens, self.target_rows, self.generator = head, tokens, target_rows, generator
        self.batch_images, self.teacher_iterations, self.self_weight = batch_images, teacher_iterations, self_weight
        self.order, self.cursor = generator.permutation(len(tokens.grid_sizes)), 0
        self.loss = 0.0

    def batches(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        count = len(self.tokens.grid_sizes)
        if self.cursor + min(self.batch_images, count) > len(self.order):
            self.order, self.cursor = self.generator.permutation(count), 0
        batch = self.order[self.cursor : self.cursor + self.batch_images]
        self.cursor += len(batch)
        return [(epoch, batch)]

    def step(self, batch: tuple[int, np.ndarray], micro_batch: int | None) -> dict[str, float]:
        iteration, positions = batch
        rows = self.tokens.rows(positions)
        logits = self.head(self.tokens.standardised(rows)).squeeze(1)
        if iteration < self.teacher_iterations:
            loss = F.binary_cross_entropy_with_logits(logits, self.target_rows[rows])
        else:
            loss = self.self_weight * F.binary_cross_entropy_with_logits(logits, (logits.detach() > 0).float())
        loss.backward()
        self.loss = float(loss.detach())
        return {"loss": self.loss}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        return {"iteration": epoch, "loss": self.loss,
                "target": "teacher" if epoch < self.teacher_iterations else "self"}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.bit_generator.state, "order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.bit_generator.state = state["generator"]
        self.order, self.cursor = state["order"], state["cursor"]

    def final_checkpoint(self, model: torch.nn.Module, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"state_dict": model.state_dict(), "mean": self.tokens.mean.cpu(), "std": self.tokens.std.cpu()}


class TokenTable:
    """Every image's tokens of one facet as rows of one (N_tokens, D) float16 tensor on ``device`` (images in
    ``names`` order, each image's h·w rows contiguous), with the per-channel mean and std over them (float32, (D,))
    for standardised inputs: a head trained across the dataset gathers a batch's rows without re-reading the store."""

    def __init__(self, store: FeatureStore, names: Sequence[str], facet: str, device):
        grids = [store.facet(name, facet) for name in names]
        self.grid_sizes = [grid.shape[:2] for grid in grids]
        self.dim = grids[0].shape[-1]
        counts = [h * w for h, w in self.grid_sizes]
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.table = torch.cat([torch.from_numpy(grid.reshape(-1, self.dim)).half() for grid in grids]).to(device)
        total = torch.zeros(self.dim, dtype=torch.float64, device=device)
        squares = torch.zeros_like(total)
        for start in range(0, len(self.table), 1 << 16):  # float64 sums, a chunk at a time
            chunk = self.table[start : start + (1 << 16)].double()
            total += chunk.sum(0)
            squares += (chunk * chunk).sum(0)
        mean = total / len(self.table)
        self.mean = mean.float()
        self.std = (squares / len(self.table) - mean * mean).clamp(min=1e-12).sqrt().float().clamp(min=1e-6)

    def rows(self, positions) -> torch.Tensor:
        """(n,) int64 row indices of the images at ``positions`` (into ``names``)."""
        return torch.cat([torch.arange(int(self.offsets[p]), int(self.offsets[p + 1])) for p in positions]).to(
            self.table.device)

    def standardised(self, rows) -> torch.Tensor:
        """(n, D) float32 (tokens − mean) / std of those rows."""
        return (self.table[rows].float() - self.mean) / self.std


def save_soft_map(soft_pixels: np.ndarray, path: Path) -> None:
    """Write an (H0, W0) soft map in [0, 1] as the stage's uint8 PNG (round(255 × value))."""
    Image.fromarray(np.round(np.clip(soft_pixels, 0.0, 1.0) * 255).astype(np.uint8), mode="L").save(path)


def method_maps(method, method_settings: Mapping[str, Any], store: FeatureStore, facet: str, batch_size: int,
                device: str | None, progress: bool, desc: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (H0, W0) float32 soft map at the image's size, clipped to [0, 1]) of every image of the store by a
    per-image ``method`` called in batches of ``batch_size``
    (:meth:`~unseg.features.store.FeatureStore.name_batches`)."""
    bar = tqdm(total=len(store.names), desc=desc, unit="img", disable=not progress)
    for position, names in enumerate(store.name_batches(batch_size)):
        grids = [store.facet(name, facet) for name in names]
        yield from zip(names, batch_soft_maps(method, method_settings, names, grids,
                                              [store.geometry(name) for name in names], device, position == 0))
        bar.update(len(names))
    bar.close()


def batch_soft_maps(method, method_settings: Mapping[str, Any], names: Sequence[str], grids: Sequence[np.ndarray],
                    geometries: Sequence[ResizeGeometry], device: str | None = None,
                    first: bool = True) -> list[np.ndarray]:
    """Per image of one batch its (H0, W0) float32 soft map at the image's size, clipped to [0, 1]: a per-image
    ``method`` on the (h, w, D) float32 ``grids`` (halved after an out-of-memory error), its grid maps upsampled
    bilinearly (``geometries``). The saliency stage and the fused extraction (:mod:`unseg.features.fused`) both call
    this."""
    pixel_maps = bool(method.attributes.get("pixel_maps"))
    by_name = dict(zip(names, grids))
    sizes = dict(zip(names, (geometry.original_size for geometry in geometries)))

    def run(part: Sequence[str]) -> list[np.ndarray]:  # the batch, or a half of it after an OOM
        batch = SaliencyBatch(part, [by_name[name] for name in part], device, first=first and part[0] == names[0],
                              image_sizes=[sizes[name] for name in part])
        return method.function(batch, **method_settings)

    maps = []
    for soft, geometry in zip(in_halves_on_oom(run, list(names), "saliency batch"), geometries):
        soft = np.asarray(soft, dtype=np.float32)
        maps.append(np.clip(soft if pixel_maps else grid_to_image(soft, geometry), 0.0, 1.0))
    return maps


def finished_soft_map(soft: np.ndarray, settings: Mapping[str, Any], image_path: str | Path | None = None
                      ) -> np.ndarray:
    """A method's (H0, W0) soft map as the stage stores it: refined by a dense CRF on its image (``refine: crf``),
    then split by the ``threshold`` rule."""
    if settings.get("refine") == "crf":
        soft = refine_with_crf(read_image(image_path), soft)
    return THRESHOLD_RULES[settings.get("threshold", "split")](soft)


def run_saliency(
    store_path: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    device: str | None = None,
    progress: bool = True,
    image_paths: Mapping[str, str | Path] | None = None,
    reuse: str | Path | None = None,
) -> list[str]:
    """Saliency of every image by the variant's method → ``out_dir/{name}.png`` (written as one atomic folder).

    Args:
        settings: the saliency variant: ``method``, ``facet``, ``batch_size``, ``refine``, ``threshold`` and the
            method's own settings.
        image_paths: image name → image file, read only to refine (``refine: crf``).
        reuse: a folder of the maps of the last run (a per-image method reading the store: not ``mask_folder``, not
            a dataset-level method), one hard-linked PNG per key (the image's grid, geometry and file, the settings,
            the code version): an image whose key is found keeps its map, the others are computed in batches
            together. Refreshed to this run's images at the end.

    Returns:
        the image names.
    """
    method = REGISTRIES["saliency"].get(settings["method"])
    method_settings = method.settings(settings)
    refine = settings.get("refine")  # left out: the method's map as it is
    store = FeatureStore(store_path)
    if refine == "crf":
        missing = [name for name in store.names if name not in (image_paths or {})]
        if missing:
            raise ValueError(f"saliency refine: crf reads each image, and no image file was given for {missing[:3]} "
                             f"({len(missing)} of {len(store.names)})")
    keys: dict[str, str] | None = None  # image name → its map's key, when maps are reused
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if method.attributes.get("dataset_level"):
            data = SaliencyDataset(store, settings["facet"], int(settings["batch_size"]), device, tmp / "extras",
                                   progress)
            maps = ((name, np.clip(grid_to_image(np.asarray(grid, np.float32), store.geometry(name)), 0.0, 1.0))
                    for name, grid in method.function(data, **method_settings))
        elif reuse is not None and not method.attributes.get("pixel_maps"):
            keys = {}
            maps = reused_or_computed_maps(method, method_settings, store, settings, device, progress, image_paths,
                                           Path(reuse), tmp, keys)
        else:
            maps = method_maps(method, method_settings, store, settings["facet"], int(settings["batch_size"]), device,
                               progress, f"saliency {method.name}")
        if refine == "crf":  # ~1 s per photo on a CPU: a bar of its own
            maps = tqdm(maps, total=len(store.names), desc="saliency + dense CRF", unit="img", disable=not progress)
        for name, soft in maps:
            save_soft_map(finished_soft_map(soft, settings, (image_paths or {}).get(name)), tmp / f"{name}.png")
    if keys is not None:
        refresh_map_cache(Path(reuse), Path(out_dir), keys)
    return store.names


def saliency_reuse_folder(out_dir: str | Path) -> Path:
    """The folder of kept maps of ``saliency/{variant}/``: ``saliency/{variant}.reuse``."""
    return reuse_folder(out_dir)


def reused_or_computed_maps(method, method_settings: Mapping[str, Any], store: FeatureStore,
                            settings: Mapping[str, Any], device: str | None, progress: bool,
                            image_paths: Mapping[str, str | Path] | None, cache: Path, out: Path,
                            keys: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
    """:func:`method_maps` for the images whose key (filled into ``keys``) ``cache`` lacks, in batches of their own;
    the others' stored maps are linked into ``out`` as they are."""
    code = code_version()
    for name in store.names:  # the method, threshold, refine (which reads the image) and the method's settings
        keys[name] = result_key(store.stored_digest(name, settings["facet"]), dict(settings), code,
                                (image_paths or {}).get(name))
    to_compute = {name for name in store.names if not (cache / f"{keys[name]}.png").is_file()}
    for name in store.names:
        if name not in to_compute:
            link_or_copy(cache / f"{keys[name]}.png", out / f"{name}.png")
    bar = tqdm(total=len(to_compute), desc=f"saliency {method.name}", unit="img", disable=not progress)
    for position, names in enumerate(store.name_batches(int(settings["batch_size"]), to_compute)):
        grids = [store.facet(name, settings["facet"]) for name in names]
        yield from zip(names, batch_soft_maps(method, method_settings, names, grids,
                                              [store.geometry(n) for n in names], device, position == 0))
        bar.update(len(names))
    bar.close()
    print(f"saliency: {len(store.names) - len(to_compute)} image(s) reused from the last run (same features and "
          f"settings), {len(to_compute)} computed", file=sys.stderr)


def refresh_map_cache(cache: Path, out_dir: Path, keys: Mapping[str, str]) -> None:
    """Make ``cache`` hold this run's maps (``out_dir/{name}.png`` as ``{key}.png``, hard links) and nothing else."""
    cache.mkdir(parents=True, exist_ok=True)
    for name, key in keys.items():
        if not (cache / f"{key}.png").is_file():
            link_or_copy(out_dir / f"{name}.png", cache / f"{key}.png")
    wanted = {f"{key}.png" for key in keys.values()}
    for entry in cache.iterdir():
        if entry.name not in wanted:
            entry.unlink()
