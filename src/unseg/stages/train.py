"""The train stage: a segmentation head trained on pseudo-labels → ``train/{variant}/round-{r}/model.pt``.

Trainers are declared in :mod:`unseg.methods.train` (``declare("train", name, "module:function", schema=...,
build_model=...)``, :mod:`unseg.config.registry`; a plugin may use ``@register``): the function takes
:class:`TrainingInputs` and its settings as keywords and writes ``model.pt`` (a checkpoint whose ``config`` names its
``method``), ``last.pt`` and ``log.csv``; ``build_model(config)`` rebuilds the model from a checkpoint's config, so
prediction (:mod:`unseg.stages.predict`) builds the right model for any trainer.

The built-in trainers are one loop (:func:`fit`) around the heads of :mod:`unseg.training.heads`: ``linear_head``,
``mask_transformer`` (Segmenter) and ``deeplab_aspp`` (DeepLab-v3's ASPP head), each on frozen tokens or, with
``finetune_blocks: N``, over the ViT whose last N blocks are fine-tuned on augmented images
(:mod:`unseg.training.finetune`; the token statistics and the resume digest still come from the store); and
``transfgu_bootstrap`` (TransFGU, section 3.3), Segmenter's mask transformer on frozen tokens trained against class
scores on the token grid with the bootstrapping losses of :mod:`unseg.training.bootstrap`
(:class:`~unseg.training.losses.BootstrapCriterion`, the loop's ``criterion``). The loop (:class:`HeadTraining` on the
training engine, :mod:`unseg.training.engine`)

* streams (tokens, labels) pairs from the zarr feature store one batch at a time (:class:`TokenLabelDataset`), so
  peak memory does not grow with the number of images; the token statistics and the resume digest come from one
  streaming pass (:func:`unseg.training.statistics.scan`);
* runs on CUDA when present, with bfloat16 autocast and pinned memory, else on the CPU in float32;
* writes ``last.pt`` after every epoch (resumed only for the same settings and the same tokens and labels, see
  :mod:`unseg.core.checkpoints`), and ``model.pt`` (the last epoch's weights) at the end;
* logs per epoch the loss, the agreement with the pseudo-labels and, when a ``monitor_split`` is set, the mIoU
  (Hungarian) of its held-out images against their ground truth: monitoring only, never used to choose a model.

Self-training rounds (``rounds``): round 1 trains on the pseudo-labels, round r on round r-1's predictions refined by
a dense CRF, starting from round r-1's weights (MaskDistill, Part 2: "iteratively updating the segmentation maps and
model weights"; its CRF configs start from the previous model); each round is its own folder and job
(:func:`unseg.stages.predict.refine_labels` makes its labels). A teacher-student trainer (``transfgu_bootstrap``,
:func:`unseg.training.rounds.is_teacher_student`) runs TransFGU's rounds instead: round r's labels average the
initial pseudo-labels with round r-1's model's probabilities (Eq. 12, :func:`unseg.stages.predict.bootstrap_labels`,
no CRF), and its student starts from the same fresh initialisation in every round.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unseg.config.registry import REGISTRIES
from unseg.core.checkpoints import data_digest, save_checkpoint
from unseg.core.devices import resolve_device
from unseg.core.io import IGNORE_LABEL, atomic_output, read_image, read_json
from unseg.evaluation.metrics import evaluate_semantic_arrays
from unseg.features.backbones import get_backbone_spec
from unseg.features.preprocess import preprocess_image
from unseg.features.store import FeatureStore
from unseg.training.data import (
    AUGMENT_KEYS,
    TEACHER_FILE,
    ImageLabelDataset,
    ImageScoreDataset,
    TokenLabelDataset,
    TokenScoreDataset,
    token_tensor,
)
from unseg.training.engine import TrainingTask, autocast_dtype, run_training
from unseg.training.finetune import ImageSegmenter, build_image_segmenter, load_store_backbone
from unseg.training.heads import AsppHead, LinearHead, MaskTransformerHead, TokenHead, build_head
from unseg.training.losses import BootstrapCriterion, Criterion, CrossEntropy, accumulate_gradients, batch_logits
from unseg.training.statistics import DatasetScan, scan, scan_tokens

__all__ = ["AsppHead", "HeadTraining", "LinearHead", "MaskTransformerHead", "TokenLabelDataset", "TokenScoreDataset",
           "TrainingInputs", "fit", "run_train", "token_tensor"]


def model_input(config: Mapping[str, Any], store: FeatureStore, name: str, image_path: str | Path | None,
                ) -> torch.Tensor:
    """What a trained model reads for one image, batched: the stored (1, D, h, w) token grid, or for a fine-tuned
    model the (1, 3, Hc, Wc) normalised image in the store's geometry."""
    if int(config.get("finetune_blocks", 0)) == 0:
        return token_tensor(store, name, config["facet"])
    if image_path is None:
        raise ValueError(f"a model that fine-tunes the backbone reads images; no image path given for {name!r}")
    spec = get_backbone_spec(config["backbone"])
    return preprocess_image(read_image(image_path), store.geometry(name), spec.mean, spec.std)[None]


@torch.no_grad()
def monitor_miou(model: torch.nn.Module, dataset: TokenLabelDataset, num_classes: int, device: torch.device,
                 autocast_dtype: torch.dtype | None) -> float:
    """mIoU (Hungarian, percent) of the model's predictions on ``dataset``'s ground truth, at its label resolution."""
    model.eval()
    pairs, num_gt = [], 1
    for index in range(len(dataset)):
        tokens, target = dataset[index]
        logits = batch_logits(model, [tokens], [tuple(target.shape)], device, autocast_dtype)[0]
        valid = target[target != IGNORE_LABEL]
        num_gt = max(num_gt, int(valid.max()) + 1 if len(valid) else 1)
        pairs.append((dataset.names[index], logits.argmax(0).cpu().numpy(), target.numpy()))
    model.train()
    return float(evaluate_semantic_arrays(pairs, num_classes, num_gt)["miou"])


LOG_FIELDS = ("epoch", "loss", "pseudo_label_accuracy", "monitor_miou")


class HeadTraining(TrainingTask):
    """:func:`fit`'s part of the training engine: shuffled batches of (model input, target) items, the criterion's
    loss accumulated over sub-batches, per epoch the mean loss, the agreement with the training labels and the
    monitored mIoU."""

    def __init__(self, model: TokenHead | ImageSegmenter, dataset: TokenLabelDataset | ImageLabelDataset,
                 criterion: Criterion, generator: torch.Generator, *, batch_size: int, workers: int,
                 device: torch.device, monitor: TokenLabelDataset | ImageLabelDataset | None,
                 num_classes: int):
        self.model, self.dataset, self.criterion, self.generator = model, dataset, criterion, generator
        self.batch_size, self.workers, self.device = batch_size, workers, device
        self.monitor, self.num_classes = monitor, num_classes
        self.autocast_dtype = autocast_dtype(device)
        self.log_fields = LOG_FIELDS + criterion.log_fields
        self.totals: dict[str, float] = {}

    def batches(self, epoch: int) -> Iterable[list]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.criterion.set_epoch(epoch)
        self.totals = {"loss": 0.0, "correct": 0, "counted": 0, **dict.fromkeys(self.criterion.log_fields, 0.0)}
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, collate_fn=list,
                                           num_workers=self.workers, pin_memory=self.device.type == "cuda")

    def prepare(self, items: list) -> tuple[list, list, int]:
        targets = [target.to(self.device, non_blocking=True) for _, target in items]
        valid = sum(self.criterion.labelled(target) for target in targets)
        self.criterion.start_step()
        return [inputs for inputs, _ in items], targets, valid

    def batch_items(self, batch: tuple[list, list, int]) -> int:
        return len(batch[0])

    def step(self, batch: tuple[list, list, int], micro_batch: int | None) -> dict[str, float]:
        inputs, targets, valid = batch
        loss, correct, terms = accumulate_gradients(self.model, inputs, targets, valid, micro_batch, self.device,
                                                    self.autocast_dtype, self.criterion)
        self.totals["loss"] += loss * valid
        self.totals["counted"] += valid
        self.totals["correct"] += correct
        for key, value in terms.items():
            self.totals[key] += value * valid
        return {"loss": loss}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        counted = max(self.totals["counted"], 1)
        monitored = self.monitor is not None and len(self.monitor)
        row = {"epoch": epoch + 1, "loss": self.totals["loss"] / counted,
               "pseudo_label_accuracy": self.totals["correct"] / counted,
               "monitor_miou": monitor_miou(self.model, self.monitor, self.num_classes, self.device,
                                            self.autocast_dtype) if monitored else None,
               **{key: self.totals[key] / counted for key in self.criterion.log_fields}}
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.criterion.load_state_dict(state.get("criterion", {}))


def fit(
    model: TokenHead | ImageSegmenter,
    dataset: TokenLabelDataset | ImageLabelDataset,
    out_dir: str | Path,
    *,
    config: Mapping[str, Any],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: str | None = None,
    workers: int = 0,
    monitor: TokenLabelDataset | ImageLabelDataset | None = None,
    progress: bool = True,
    statistics: DatasetScan | None = None,
    criterion: Criterion | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` with AdamW (cosine learning-rate decay over all steps) and cross-entropy
    (255 ignored) or another ``criterion``, on the training engine (:func:`unseg.training.engine.run_training`):
    ``last.pt`` every epoch, then ``model.pt`` (the last epoch's weights) and ``log.csv``.

    Args:
        model: an untrained head (or :class:`~unseg.training.finetune.ImageSegmenter` over images); its token statistics
            are set here, from ``statistics``.
        dataset: (model input, labels) items: stored tokens, or images (augmented per epoch through its
            ``set_epoch``).
        config: stored in ``model.pt`` (must name the ``method`` and what ``build_model`` needs); it and the data
            digest key the resume.
        batch_size: images per optimiser step.
        workers: DataLoader processes reading the store.
        monitor: held-out images with their ground truth, scored after every epoch (``monitor_miou``, logging only).
        statistics: the token statistics and data digest (default: :func:`scan` of ``dataset``, which must then be
            a :class:`TokenLabelDataset`); the digest keys the resume.
        criterion: the loss and what counts as a labelled position (default :class:`CrossEntropy` against label
            maps); its state (random draws) is saved in ``last.pt``, its ``log_fields`` extend ``log.csv``.

    Returns:
        the last epoch's log row.
    """
    torch.manual_seed(seed)
    criterion = criterion or CrossEntropy()
    device_ = resolve_device(device)
    statistics = statistics or scan(dataset, progress)
    model.set_statistics(statistics.mean, statistics.std)
    model.to(device_).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(lr), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(dataset) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    task = HeadTraining(model, dataset, criterion, generator, batch_size=batch_size, workers=workers, device=device_,
                        monitor=monitor, num_classes=config["num_classes"])
    settings = {**config, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                "seed": seed, "monitor": monitor.names if monitor else None}
    rows = run_training(task, model, optimizer, out_dir, epochs=epochs, config=config, settings=settings,
                        inputs_digest=statistics.digest, scheduler=scheduler, generator=generator,
                        progress=progress, desc=f"train {config.get('method', '')}")
    if monitor is not None and len(monitor):
        print(f"monitor ({len(monitor)} held-out images, ground truth; not used for training or model choice): "
              f"mIoU {rows[-1]['monitor_miou']:.2f} after epoch {rows[-1]['epoch']}", file=sys.stderr)
    return rows[-1]


@dataclass(frozen=True)
class TrainingInputs:
    """What a trainer reads and where it writes.

    Attributes:
        store_path: the feature store of the variant's ``features``; ``facet`` is the facet trained on.
        label_paths: image name → label PNG to train on (0 background, 1..num_classes-1 pseudo-classes, 255
            ignored); ``transfgu_bootstrap`` reads the soft class scores ``soft/{name}.npy`` beside it when present.
        out_dir: the round's folder (``model.pt``, ``last.pt``, ``log.csv``).
        num_classes: output classes including background.
        config: the variant's settings, stored in the checkpoint (with ``method``).
        monitor_paths: held-out image name → ground-truth PNG, scored every epoch for the log only.
        initial_model: a checkpoint of the same trainer to start from (the previous self-training round's).
        image_paths: image name → image file, of the trained and monitored images: read by trainers that fine-tune
            the backbone (``finetune_blocks`` > 0).
    """

    store_path: Path
    label_paths: Mapping[str, Path]
    out_dir: Path
    num_classes: int
    facet: str
    config: Mapping[str, Any]
    progress: bool = True
    monitor_paths: Mapping[str, Path] | None = None
    initial_model: Path | None = None
    image_paths: Mapping[str, Path] | None = None


def load_initial_model(model: TokenHead | ImageSegmenter, path: Path, config: Mapping[str, Any]) -> None:
    """Start ``model`` from the checkpoint ``path`` of the same trainer: all its weights, or (a frozen-token round
    before a fine-tuning one) its head.

    Raises:
        ValueError: the checkpoint is another method, class count or token size, or fine-tuned other blocks.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = checkpoint["config"]
    keys = ("method", "num_classes", "embed_dim")
    previous_blocks, blocks = int(saved.get("finetune_blocks", 0)), int(config.get("finetune_blocks", 0))
    if {key: saved.get(key) for key in keys} != {key: config.get(key) for key in keys} or \
            previous_blocks not in (0, blocks):
        raise ValueError(f"{path}: a {saved.get('method')} model with {saved.get('num_classes')} classes on "
                         f"{saved.get('embed_dim')}-dim tokens, fine-tuning {previous_blocks} blocks, cannot start a "
                         f"{config.get('method')} training with {config.get('num_classes')} classes on "
                         f"{config.get('embed_dim')}-dim tokens fine-tuning {blocks}")
    target = model.head if previous_blocks == 0 and blocks > 0 else model
    target.load_state_dict(checkpoint["state_dict"])


def train_head(inputs: TrainingInputs, kind: str, head_options: Mapping[str, Any], *, epochs, lr, weight_decay,
               batch_size, label_scale, seed, device, workers, finetune_blocks, backbone_lr,
               probe_epochs, **augment) -> dict:
    """Build the ``kind`` head (:mod:`unseg.training.heads`) and :func:`fit` it on the inputs' labels: on the stored
    tokens,
    or (``finetune_blocks`` > 0) under the backbone's last blocks on augmented images (:mod:`unseg.training.finetune`),
    after
    ``probe_epochs`` of the head alone on the stored tokens (``out_dir/probe/``) unless an initial model is given."""
    tokens = TokenLabelDataset(inputs.store_path, inputs.facet, inputs.label_paths, inputs.num_classes, label_scale)
    monitor = (TokenLabelDataset(inputs.store_path, inputs.facet, inputs.monitor_paths, None, label_scale)
               if inputs.monitor_paths else None)
    embed_dim = tokens[0][0].shape[0] if len(tokens) else 0
    config = {**inputs.config, "num_classes": inputs.num_classes, "facet": inputs.facet, "embed_dim": embed_dim,
              "label_scale": label_scale}
    torch.manual_seed(seed)  # the head's initial weights
    model = build_head(kind, embed_dim, inputs.num_classes, head_options)
    dataset, statistics = tokens, None
    if finetune_blocks:
        method = inputs.config["method"]
        if inputs.facet != "tokens":
            raise ValueError(f"train.{method}: finetune_blocks={finetune_blocks} trains on the backbone's output "
                             f"tokens (facet: tokens), not on facet {inputs.facet!r}")
        if inputs.image_paths is None:
            raise ValueError(f"train.{method}: finetune_blocks={finetune_blocks} reads the images; no image paths")
        store = tokens.store
        config.update({key: store.attrs[key] for key in ("backbone", "weights", "weights_digest")})
        backbone, spec = load_store_backbone(config["backbone"], config["weights"], config["weights_digest"])
        model = ImageSegmenter(backbone, finetune_blocks, model, spec.patch_size, backbone_lr)
        statistics = scan(tokens, inputs.progress)  # of the stored tokens: what the unchanged backbone gives
        dataset = ImageLabelDataset(inputs.store_path, inputs.image_paths, inputs.label_paths, inputs.num_classes,
                                    label_scale, spec.mean, spec.std, {key: augment[key] for key in AUGMENT_KEYS},
                                    seed)
        monitor = (ImageLabelDataset(inputs.store_path, inputs.image_paths, inputs.monitor_paths, None, label_scale,
                                     spec.mean, spec.std, None) if inputs.monitor_paths else None)
    if inputs.initial_model is not None:
        load_initial_model(model, inputs.initial_model, config)
        config["initial_model_digest"] = data_digest(sorted(model.state_dict().items()))  # keys the resume
    elif finetune_blocks and probe_epochs:
        # Linear probing, then fine-tuning (LP-FT): the head first learns on the frozen tokens.
        fit(model.head, tokens, inputs.out_dir / "probe", config={**config, "finetune_blocks": 0}, epochs=probe_epochs,
            lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=device, workers=workers,
            progress=inputs.progress, statistics=statistics)
        model.head.to("cpu")
        config["initial_model_digest"] = data_digest(sorted(model.state_dict().items()))  # keys the resume
    return fit(model, dataset, inputs.out_dir, config=config, epochs=epochs, lr=lr, weight_decay=weight_decay,
               batch_size=batch_size, seed=seed, device=device, workers=workers, monitor=monitor,
               progress=inputs.progress, statistics=statistics)


def head_model_builder(kind: str, option_keys: Sequence[str]):
    """build_model of a head trainer (:func:`unseg.methods.train.head_builder`): a function of a checkpoint's config
    that builds the untrained ``kind`` head it describes (with the config's ``option_keys``), under the fine-tuned
    ViT when the config has ``finetune_blocks``."""
    def build_model(config: Mapping[str, Any]) -> TokenHead | ImageSegmenter:
        # an option a checkpoint predates keeps its head's default
        head = build_head(kind, config["embed_dim"], config["num_classes"],
                          {key: config[key] for key in option_keys if key in config})
        return build_image_segmenter(config, head) if config.get("finetune_blocks") else head
    return build_model


def linear_head(inputs: TrainingInputs, *, tokens, **loop) -> dict:
    """A linear 1×1 head on frozen standardised (or unit-length) tokens, trained with AdamW and cross-entropy on the
    pseudo-labels."""
    return train_head(inputs, "linear", {"tokens": tokens}, **loop)


def mask_transformer(inputs: TrainingInputs, *, width, layers, heads, dropout, **loop) -> dict:
    """Segmenter's mask transformer (class embeddings decoded with the patch tokens) on frozen tokens."""
    if width % heads:
        raise ValueError(f"train.mask_transformer: heads={heads} must divide width={width}")
    return train_head(inputs, "mask_transformer", {"width": width, "layers": layers, "heads": heads,
                                                   "dropout": dropout}, **loop)


def deeplab_aspp(inputs: TrainingInputs, *, atrous_rates, **loop) -> dict:
    """DeepLab-v3's ASPP head (torchvision's DeepLabHead) on frozen tokens."""
    return train_head(inputs, "aspp", {"atrous_rates": list(atrous_rates)}, **loop)


def read_teacher(label_paths: Mapping[str, Path]) -> dict[str, Any] | None:
    """The teacher of a TransFGU round, from its label folder's ``teacher.json`` (written with the labels by
    :func:`unseg.stages.predict.bootstrap_labels`), or None: the labels are the initial pseudo-labels (round 1)."""
    folders = {Path(path).parent for path in label_paths.values()}
    teachers = [folder / TEACHER_FILE for folder in folders if (folder / TEACHER_FILE).exists()]
    if not teachers:
        return None
    if len(folders) > 1:
        raise ValueError(f"labels from {len(folders)} folders, one of them bootstrapped by a teacher ({teachers[0]}); "
                         "a round trains on one label folder")
    return read_json(teachers[0])


# The model's loss is computed on the token grid (TransFGU: at the pseudo-labels' size); the monitored ground truth
# is scored at training_schema's default label_scale, 4 × the grid.
MONITOR_LABEL_SCALE = 4


def transfgu_bootstrap(inputs: TrainingInputs, *, width, layers, heads, dropout, alpha, alpha_start, omega_diversity,
                       omega_uncertainty, epochs, lr, weight_decay, batch_size, seed, device, workers,
                       finetune_blocks, augment, crop_side, output_scale, **photometric) -> dict:
    """TransFGU's bootstrapped decoder (Yin et al., ECCV 2022, section 3.3): Segmenter's mask transformer on frozen
    tokens, trained on class scores with the peer, diversity and uncertainty losses (Eq. 13-16).

    The targets are (C, h, w) class scores on the token grid (:class:`~unseg.training.data.TokenScoreDataset`):
    the pseudo-labels' soft maps, or the one-hot of any label PNG per cell. Round 1 trains the student on the
    initial pseudo-labels M. In round r ≥ 2 the teacher is round r-1's model: its labels M̂ (Eq. 12,
    :func:`unseg.stages.predict.bootstrap_labels`, with a ``teacher.json``) aggregate M and the teacher's softmax, and
    the
    student is reset, i.e. trained from the fresh initialisation of ``seed`` ("reset to the initial state"), never
    from the teacher's weights; so no ``initial_model`` is taken.

    With ``augment`` the student trains on augmented images through the frozen ViT
    (:class:`~unseg.training.data.ImageScoreDataset`, :class:`~unseg.training.finetune.ImageSegmenter` with no trained
    block); the frozen ViT on an un-augmented image gives the stored tokens, so ``model.pt`` keeps the head alone
    and predicts from the store like any frozen-token model.
    """
    method = inputs.config["method"]
    if finetune_blocks:
        raise ValueError(f"train.<variant>.finetune_blocks = {finetune_blocks}: the {method} trainer trains its "
                         "student on the stored tokens only; set finetune_blocks to 0")
    if inputs.initial_model is not None:
        raise ValueError(f"train.{method} resets the student each round (TransFGU, sec. 3.3): it starts from no "
                         f"previous model, and was given {inputs.initial_model}")
    if width % heads:
        raise ValueError(f"train.{method}: heads={heads} must divide width={width}")
    dataset = TokenScoreDataset(inputs.store_path, inputs.facet, inputs.label_paths, inputs.num_classes)
    monitor = (TokenLabelDataset(inputs.store_path, inputs.facet, inputs.monitor_paths, None, MONITOR_LABEL_SCALE)
               if inputs.monitor_paths else None)
    teacher = read_teacher(inputs.label_paths)
    embed_dim = dataset[0][0].shape[0] if len(dataset) else 0
    config = {**inputs.config, "num_classes": inputs.num_classes, "facet": inputs.facet, "embed_dim": embed_dim,
              "teacher": teacher, "student": f"reset: initialised with seed {seed}"}
    options = {"width": width, "layers": layers, "heads": heads, "dropout": dropout}
    torch.manual_seed(seed)  # the student's initial weights: the same in every round
    model = build_head("mask_transformer", embed_dim, inputs.num_classes, options)
    criterion = BootstrapCriterion(inputs.num_classes, alpha=alpha, alpha_start=alpha_start,
                                   omega_diversity=omega_diversity, omega_uncertainty=omega_uncertainty,
                                   teacher=teacher is not None, seed=seed)
    statistics = None
    if augment:
        if inputs.image_paths is None:
            raise ValueError(f"train.{method}: augment reads the images; no image paths given")
        store = dataset.store
        backbone, spec = load_store_backbone(store.attrs["backbone"], store.attrs["weights"],
                                             store.attrs["weights_digest"])
        statistics = scan_tokens(((dataset.names[i], *_with_scores(dataset[i])) for i in range(len(dataset))),
                                 len(dataset), inputs.progress)  # of the stored tokens: the frozen ViT's own
        model = ImageSegmenter(backbone, 0, model, spec.patch_size)
        dataset = ImageScoreDataset(inputs.store_path, inputs.image_paths, inputs.label_paths, inputs.num_classes,
                                    spec.mean, spec.std, {"crop_side": crop_side, "output_scale": output_scale,
                                                          **photometric}, seed)
        monitor = (ImageLabelDataset(inputs.store_path, inputs.image_paths, inputs.monitor_paths, None,
                                     MONITOR_LABEL_SCALE, spec.mean, spec.std, None) if inputs.monitor_paths else None)
    row = fit(model, dataset, inputs.out_dir, config=config, epochs=epochs, lr=lr, weight_decay=weight_decay,
              batch_size=batch_size, seed=seed, device=device, workers=workers, monitor=monitor,
              progress=inputs.progress, criterion=criterion, statistics=statistics)
    if augment:
        keep_head_only(inputs.out_dir / "model.pt")
    return row


def _with_scores(item: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    tokens, scores = item
    return tokens, {"scores": scores}


def keep_head_only(model_path: Path) -> None:
    """Rewrite a checkpoint of an :class:`~unseg.training.finetune.ImageSegmenter` with no trained block as its head's
    checkpoint (the ``head.`` prefix dropped): the frozen ViT adds nothing the stored tokens lack."""
    checkpoint = torch.load(model_path, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = {key.removeprefix("head."): value for key, value in checkpoint["state_dict"].items()}
    with atomic_output(model_path) as tmp:
        save_checkpoint(checkpoint, tmp)


def run_train(
    store_path: str | Path,
    label_dir: str | Path,
    names: Sequence[str],
    out_dir: str | Path,
    num_classes: int,
    settings: Mapping[str, Any],
    progress: bool = True,
    monitor_paths: Mapping[str, str | Path] | None = None,
    initial_model: str | Path | None = None,
    image_paths: Mapping[str, str | Path] | None = None,
) -> dict:
    """Train the variant's method on the labels ``label_dir/{name}.png`` of ``names``.

    Args:
        num_classes: output classes including background (the pseudolabels variant's ``clusters`` + 1).
        settings: the train variant: ``method``, ``facet`` and the method's own settings.
        monitor_paths: held-out image name → ground-truth PNG, scored each epoch for the log (not trained on).
        initial_model: start from this checkpoint of the same trainer (a previous round's ``model.pt``).
        image_paths: image name → image file (read when the method fine-tunes the backbone).

    Returns:
        the trainer's log row of the kept epoch.
    """
    method = REGISTRIES["train"].get(settings["method"])
    config = {"method": method.name, "facet": settings["facet"], **method.settings(settings)}
    monitor = {name: Path(path) for name, path in (monitor_paths or {}).items()}
    inputs = TrainingInputs(Path(store_path),
                            {name: Path(label_dir) / f"{name}.png" for name in names if name not in monitor},
                            Path(out_dir), int(num_classes), settings["facet"], config, progress, monitor or None,
                            Path(initial_model) if initial_model else None,
                            {name: Path(path) for name, path in image_paths.items()} if image_paths else None)
    return method(inputs, settings=settings)
