"""A class-agnostic Mask R-CNN over a ViT's token grid (the model of the instances stage,
:mod:`unseg.stages.instances`).

The pieces are torchvision's (``RegionProposalNetwork``, ``RoIHeads``, ``MultiScaleRoIAlign``, the Faster R-CNN
box head and the Mask R-CNN mask head); what is ours is how the ViT feeds them:

* **The model frame.** Every token is :data:`FRAME_STRIDE` (16) model pixels wide, whatever the backbone's patch
  size: an image with an (h, w) token grid is a (16h, 16w) "image" to the detector. torchvision infers each pyramid
  level's scale as a power of two of the image size over the level's size, which a 14-px patch (DINOv2) would break;
  in the model frame the levels' strides are exactly 4, 8, 16 and 32. :mod:`unseg.stages.instances.targets` maps
  targets into the frame and :mod:`unseg.stages.instances.detect` detections back to the original pixels, with the
  feature store's geometry.
* **A simple feature pyramid** (ViTDet, Li et al. ECCV 2022, section 3 "Simple feature pyramid", Fig. 2c): the last
  block's (B, D, h, w) token grid deconvolved to scales 4 and 2, kept at 1 and max-pooled to 0.5, each followed by a
  1×1 and a 3×3 convolution with LayerNorm, plus the usual extra max-pooled level for the RPN's largest anchors.
* **What it reads**: the stored tokens (the frozen backbone's exact output, read from the zarr store), or images
  through the ViT itself (frozen, or its last blocks trained), for augmented inputs; either way standardised per
  channel with the training tokens' statistics before the pyramid.
* **DropLoss** (CutLER, Wang et al. CVPR 2023, Eq. 2): a sampled region whose box overlaps no target box by more
  than ``drop_iou`` (0.01) gives no classification loss, so the model is not taught that an object the pseudo-masks
  missed is background.
* **The mask loss** (``mask_loss``): Mask R-CNN's per-pixel cross-entropy against the pseudo-mask (``"mask"``),
  or that loss plus BoxInst's pairwise term (``"mask_pairwise"``; Tian et al. CVPR 2021, section 3.3, part of the
  weak supervision Engstler et al. 2023, A.2.1, train their SOLOv2 with): inside the target's box neighbouring cells
  of similar colour are pulled to the same label (:func:`pairwise_colour_loss`), so the image's edges shape the
  mask beside the coarse pseudo-mask. (FreeSOLO's projection term, the rest of that supervision, has a degenerate
  minimum on the RoI mask head and was removed: docs/benchmarks.md, "Instances stage".)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss, project_masks_on_boxes
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou, roi_align

from unseg.methods.instances import MASK_LOSSES, PYRAMID_SCALES
from unseg.training.heads import TokenHead

FRAME_STRIDE = 16  # model pixels per token


class LayerNorm2d(torch.nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, at every position (ViTDet's norm in the pyramid)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(torch.nn.Module):
    """(B, D, h, w) tokens → ``OrderedDict`` of (B, C, h·s, w·s) maps named "0", "1", ... for each scale s, plus
    "pool" (the last map max-pooled with stride 2).

    Args:
        embed_dim: D.
        channels: C, the pyramid's width (256 in ViTDet and torchvision's FPN).
        scales: each a power of two from 4 down to 1/8, in decreasing order.
    """

    def __init__(self, embed_dim: int, channels: int, scales: Sequence[float] = PYRAMID_SCALES):
        super().__init__()
        scales = tuple(float(scale) for scale in scales)
        if list(scales) != sorted(scales, reverse=True) or len(set(scales)) != len(scales):
            raise ValueError(f"pyramid scales must decrease: {scales}")
        self.scales, self.out_channels = scales, int(channels)
        self.levels = torch.nn.ModuleList(self._level(embed_dim, channels, scale) for scale in scales)

    @staticmethod
    def _level(embed_dim: int, channels: int, scale: float) -> torch.nn.Sequential:
        layers: list[torch.nn.Module] = []
        width = embed_dim
        if scale == 4:
            layers += [torch.nn.ConvTranspose2d(width, width // 2, 2, stride=2), LayerNorm2d(width // 2),
                       torch.nn.GELU(), torch.nn.ConvTranspose2d(width // 2, width // 4, 2, stride=2)]
            width //= 4
        elif scale == 2:
            layers.append(torch.nn.ConvTranspose2d(width, width // 2, 2, stride=2))
            width //= 2
        elif scale in (0.5, 0.25, 0.125):
            layers.append(torch.nn.MaxPool2d(int(1 / scale)))
        elif scale != 1:
            raise ValueError(f"pyramid scale {scale}: one of 4, 2, 1, 0.5, 0.25, 0.125")
        layers += [torch.nn.Conv2d(width, channels, 1, bias=False), LayerNorm2d(channels),
                   torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False), LayerNorm2d(channels)]
        return torch.nn.Sequential(*layers)

    @property
    def strides(self) -> list[int]:
        """Each level's stride in model pixels, then the pooled level's."""
        strides = [int(FRAME_STRIDE / scale) for scale in self.scales]
        return strides + [2 * strides[-1]]

    def forward(self, tokens: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = OrderedDict((str(i), level(tokens)) for i, level in enumerate(self.levels))
        maps["pool"] = F.max_pool2d(maps[str(len(self.levels) - 1)], kernel_size=1, stride=2)
        return maps


class TokenStandardiser(TokenHead):
    """(B, D, h, w) → the same, standardised with the training tokens' per-channel statistics (no parameters)."""

    def __init__(self, embed_dim: int, num_classes: int = 0):
        super().__init__(embed_dim, num_classes)
        self.decode = torch.nn.Identity()


def drop_loss(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: Sequence[torch.Tensor],
              regression_targets: Sequence[torch.Tensor], kept: Sequence[torch.Tensor],
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN's losses with CutLER's DropLoss: the cross-entropy of a region whose ``kept`` is False counts 0.

    Args:
        class_logits: (R, K+1) over the sampled regions of all images.
        box_regression: (R, (K+1)·4).
        labels: per image (R_i,) int64, 0 background.
        regression_targets: per image (R_i, 4).
        kept: per image (R_i,) bool: the region's best box IoU with a target exceeds the drop threshold.

    Returns:
        (classification loss: the mean over all R regions of kept × cross-entropy, as CutLER's
        ``(weights * cross_entropy(..., reduction="none")).mean()``; box loss: smooth L1 over the positives / R, as
        torchvision's ``fastrcnn_loss``).
    """
    labels_all = torch.cat(list(labels))
    targets_all = torch.cat(list(regression_targets))
    weights = torch.cat(list(kept)).to(class_logits.dtype)
    classification = (F.cross_entropy(class_logits, labels_all, reduction="none") * weights).mean()
    positive = torch.where(labels_all > 0)[0]
    boxes = box_regression.reshape(class_logits.shape[0], -1, 4)[positive, labels_all[positive]]
    box_loss = F.smooth_l1_loss(boxes, targets_all[positive], beta=1 / 9, reduction="sum") / labels_all.numel()
    return classification, box_loss


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) sRGB in 0-255 (uint8 or float) → (3, H, W) float32 CIELAB under D65 (L in 0-100), the colour
    space of BoxInst's pairwise similarities (section 3.3)."""
    rgb = image.float() / 255.0
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz = linear.new_tensor([[0.412453, 0.357580, 0.180423],
                                [0.212671, 0.715160, 0.072169],
                                [0.019334, 0.119193, 0.950227]])
    white = linear.new_tensor([0.950456, 1.0, 1.088754])
    xyz = torch.einsum("ij,jhw->ihw", to_xyz, linear) / white[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


# BoxInst's 8 neighbours of a cell (section 3.3); on the mask head's M × M grid of a region rather than on the
# image at stride 4, so adjacent cells (a cell spans 4-14 px of a 100-400 px object) instead of dilation 2.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbours(grid: torch.Tensor) -> torch.Tensor:
    """(R, C, M, M) → (R, C, 8, M, M): each cell's neighbour at :data:`NEIGHBOUR_OFFSETS` (row-major 3 × 3 window
    without its centre), 0 beyond the grid."""
    regions, channels, size = grid.shape[0], grid.shape[1], grid.shape[-1]
    windows = F.unfold(grid, kernel_size=3, padding=1).view(regions, channels, 9, size, size)
    return windows[:, :, [0, 1, 2, 3, 5, 6, 7, 8]]


def colour_similarities(colours: torch.Tensor, theta: float = 2.0) -> torch.Tensor:
    """(R, 3, M, M) CIELAB colours of each region's cells → (R, 8, M, M) similarity exp(−‖c_i − c_j‖ / θ) of cell i
    with its neighbour j at :data:`NEIGHBOUR_OFFSETS` (BoxInst Eq. 4, θ = 2); 0 where the neighbour is outside."""
    size = colours.shape[-1]
    on_grid = neighbours(colours.new_ones(1, 1, size, size))[:, 0]  # (1, 8, M, M): one grid, every region's
    return torch.exp(-(colours[:, :, None] - neighbours(colours)).norm(dim=1) / theta) * on_grid


def pairwise_colour_loss(mask_logits: torch.Tensor, similarities: torch.Tensor, in_box: torch.Tensor,
                         threshold: float = 0.3) -> torch.Tensor:
    """BoxInst's pairwise term (Eq. 3-5): −log P(y_i = y_j), P = m_i m_j + (1 − m_i)(1 − m_j), averaged over the
    edges whose colour similarity is at least ``threshold`` (τ = 0.3) from a cell i inside the target's box.

    Args:
        mask_logits: (R, M, M) logits.
        similarities: (R, 8, M, M) from :func:`colour_similarities` (0 for a neighbour beyond the grid, so never
            counted).
        in_box: (R, M, M) bool: the cell's centre lies inside the region's target box.
    """
    log_fg, log_bg = F.logsigmoid(mask_logits)[:, None], F.logsigmoid(-mask_logits)[:, None]
    log_same = torch.logaddexp(log_fg + neighbours(log_fg)[:, 0], log_bg + neighbours(log_bg)[:, 0])
    weights = (similarities >= threshold).to(log_same.dtype) * in_box[:, None].to(log_same.dtype)
    return -(log_same * weights).sum() / weights.sum().clamp(min=1.0)


def cells_in_boxes(regions: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(R, size, size) bool: which cells of each region's size × size grid (``regions`` (R, 4) x1, y1, x2, y2) have
    their centre inside the matching ``boxes`` (R, 4)."""
    steps = (torch.arange(size, device=regions.device, dtype=regions.dtype) + 0.5) / size
    xs = regions[:, 0:1] + steps[None] * (regions[:, 2:3] - regions[:, 0:1])
    ys = regions[:, 1:2] + steps[None] * (regions[:, 3:4] - regions[:, 1:2])
    inside_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])
    inside_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def colour_mask_loss(mask_logits: torch.Tensor, regions: Sequence[torch.Tensor], targets: Sequence[dict],
                     matched: Sequence[torch.Tensor], pairwise_weight: float = 1.0,
                     pairwise_threshold: float = 0.3) -> torch.Tensor:
    """The mask loss of the positive regions with the pairwise colour term (``mask_loss: mask_pairwise``): Mask
    R-CNN's per-pixel cross-entropy against the pseudo-masks (torchvision's ``maskrcnn_loss``: the same RoI-Aligned
    targets) plus ``pairwise_weight`` × :func:`pairwise_colour_loss` on each image's ``colours``.

    Args:
        mask_logits: (R, 2, M, M) of the mask predictor (channel 1: the object class) for the positive regions of
            all images, in image order.
        regions: per image (R_i, 4) the positive regions' boxes, model pixels.
        targets: per image ``masks`` (N, H, W), ``boxes`` (N, 4) and ``colours`` (3, H, W) CIELAB in the model frame.
        matched: per image (R_i,) the index of each region's target.
    """
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0
    size = mask_logits.shape[-1]
    logits = mask_logits[:, 1]
    mask_targets = torch.cat([project_masks_on_boxes(target["masks"], boxes, index, size)
                              for target, boxes, index in zip(targets, regions, matched)])
    colours = torch.cat([roi_align(target["colours"][None].float(), [boxes], (size, size), 1.0)
                         for target, boxes in zip(targets, regions)])
    in_box = torch.cat([cells_in_boxes(boxes, target["boxes"][index].to(boxes.dtype), size)
                        for target, boxes, index in zip(targets, regions, matched)])
    pairwise = pairwise_colour_loss(logits, colour_similarities(colours), in_box, pairwise_threshold)
    return F.binary_cross_entropy_with_logits(logits, mask_targets) + pairwise_weight * pairwise


class DropLossRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` whose training classification loss is :func:`drop_loss` (``drop_iou`` None: the
    plain loss) and whose mask loss is Mask R-CNN's or, with ``mask_loss`` ``"mask_pairwise"``,
    :func:`colour_mask_loss` (the targets then carry each image's ``colours``). ``last_dropped`` holds the fraction
    of sampled regions the last training step dropped."""

    def __init__(self, *args, drop_iou: float | None = 0.01, mask_loss: str = "mask", pairwise_weight: float = 1.0,
                 pairwise_threshold: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss {mask_loss!r}: one of {list(MASK_LOSSES)}")
        self.drop_iou, self.mask_loss = drop_iou, mask_loss
        self.pairwise_weight, self.pairwise_threshold = pairwise_weight, pairwise_threshold
        self.last_dropped = 0.0

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or (self.drop_iou is None and self.mask_loss == "mask"):
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        kept = []
        for boxes, target in zip(proposals, targets):
            if self.drop_iou is None:
                kept.append(torch.ones(len(boxes), dtype=torch.bool, device=boxes.device))
            elif target["boxes"].numel() == 0:
                kept.append(torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device))
            else:
                kept.append(box_iou(boxes, target["boxes"].to(boxes.dtype)).max(dim=1).values > self.drop_iou)
        total = sum(len(k) for k in kept)
        self.last_dropped = float(sum(int((~k).sum()) for k in kept)) / max(total, 1)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = drop_loss(class_logits, box_regression, labels, regression_targets, kept)
        positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_proposals = [boxes[pos] for boxes, pos in zip(proposals, positives)]
        mask_matched = [matched[pos] for matched, pos in zip(matched_idxs, positives)]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        if self.mask_loss != "mask":
            loss_mask = colour_mask_loss(mask_logits, mask_proposals, targets, mask_matched, self.pairwise_weight,
                                         self.pairwise_threshold)
        else:
            loss_mask = maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                      [t["labels"] for t in targets], mask_matched)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}


class InstanceSegmenter(torch.nn.Module):
    """(backbone →) standardise → :class:`SimpleFeaturePyramid` → RPN → RoI heads, in the model frame
    (:data:`FRAME_STRIDE`).

    ``forward(inputs, targets)``: ``inputs`` is a list of per-image tensors: (D, h, w) stored tokens, or, with a
    ``backbone`` (an :class:`unseg.training.finetune.ImageSegmenter` whose ``tokens`` run the ViT), (3, h·p, w·p)
    normalised images. Items of one size are encoded together; the standardised token grids are zero-padded to the
    batch's largest. Training (``targets``: per image ``boxes`` (N, 4) float model pixels x1, y1, x2, y2, ``labels``
    (N,) int64 ones, ``masks`` (N, 16h, 16w) uint8, and with ``mask_loss: mask_pairwise`` ``colours`` (3, 16h, 16w)
    float32 CIELAB, :func:`unseg.stages.instances.data.frame_colours`) returns the dict of losses; evaluation returns
    per image ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,) and ``masks`` (N, 1, 28, 28) probabilities in the
    box.

    ``state_dict`` holds what is trained: a backbone's frozen blocks come from its weights file and are neither
    saved nor expected by ``load_state_dict``.
    """

    def __init__(self, standardise: TokenStandardiser, pyramid: SimpleFeaturePyramid, rpn: RegionProposalNetwork,
                 roi_heads: DropLossRoIHeads, backbone: torch.nn.Module | None = None):
        super().__init__()
        self.standardise, self.pyramid, self.rpn, self.roi_heads = standardise, pyramid, rpn, roi_heads
        self.backbone = backbone

    @property
    def reads_images(self) -> bool:
        return self.backbone is not None

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The training tokens' (D,) per-channel mean and standard deviation."""
        self.standardise.set_statistics(mean, std)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimiser groups: the detector at ``lr``, a fine-tuned backbone tail at its own rate."""
        modules = (self.pyramid, self.rpn, self.roi_heads)
        detector = [p for module in modules for p in module.parameters()]
        groups = [{"params": detector, "lr": lr}]
        if self.backbone is not None:
            # its head is a parameter-free placeholder: the non-empty groups are the fine-tuned blocks
            groups += [group for group in self.backbone.parameter_groups(lr) if group["params"]]
        return groups

    def encode(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(B, D, h_max, w_max) standardised token grids (zero-padded) and each image's (16h, 16w) frame size."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for position, item in enumerate(inputs):
            by_shape.setdefault(tuple(item.shape), []).append(position)
        grids: list[torch.Tensor | None] = [None] * len(inputs)
        for positions in by_shape.values():
            stacked = torch.stack([inputs[p] for p in positions])
            encoded = self.standardise(self.backbone.tokens(stacked) if self.backbone is not None else stacked)
            for offset, position in enumerate(positions):
                grids[position] = encoded[offset]
        height = max(grid.shape[-2] for grid in grids)
        width = max(grid.shape[-1] for grid in grids)
        batch = grids[0].new_zeros((len(grids), grids[0].shape[0], height, width))
        for position, grid in enumerate(grids):
            batch[position, :, : grid.shape[-2], : grid.shape[-1]] = grid
        sizes = [(int(grid.shape[-2]) * FRAME_STRIDE, int(grid.shape[-1]) * FRAME_STRIDE) for grid in grids]
        return batch, sizes

    def forward(self, inputs: Sequence[torch.Tensor], targets: Sequence[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("training needs targets")
        tokens, sizes = self.encode(inputs)
        features = self.pyramid(tokens)
        # The RPN's anchor generator reads only the padded batch size off the image tensor: an empty one will do.
        frame = tokens.new_empty((len(sizes), 0, tokens.shape[-2] * FRAME_STRIDE, tokens.shape[-1] * FRAME_STRIDE))
        targets = list(targets) if targets is not None else None
        proposals, rpn_losses = self.rpn(ImageList(frame, sizes), features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, sizes, targets)
        return {**rpn_losses, **roi_losses} if self.training else detections

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load the trained part; only a backbone's frozen keys may be missing."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = {f"backbone.{key}" for key in getattr(self.backbone, "frozen_keys", ())}
        missing = [key for key in result.missing_keys if key not in frozen]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"instance model state: missing keys {missing[:5]}, unexpected keys "
                               f"{result.unexpected_keys[:5]}")
        return result


def build_mask_rcnn(embed_dim: int, *, channels: int = 256,
                    scales: Sequence[float] = PYRAMID_SCALES, rois_per_image: int = 512,
                    detections_per_image: int = 100, min_score: float = 0.05,
                    drop_iou: float | None = 0.01, mask_loss: str = "mask", pairwise_weight: float = 1.0,
                    pairwise_threshold: float = 0.3, backbone: torch.nn.Module | None = None) -> InstanceSegmenter:
    """A class-agnostic (one foreground class) Mask R-CNN on (B, D, h, w) token grids (of ``backbone`` on images,
    or stored).

    torchvision's Mask R-CNN defaults (He et al. ICCV 2017; torchvision ``maskrcnn_resnet50_fpn``): anchors of
    8 × each level's stride (32..512 px at strides 4..64) with aspect ratios 0.5, 1, 2; RPN IoU 0.7 / 0.3, 256
    anchors per image, NMS 0.7, 2000 / 1000 proposals (train / test); RoI sampling IoU 0.5, ``rois_per_image``
    regions with 25 % positives; a two-layer box head of 4·``channels`` (1024 at 256); four 3×3 convolutions of
    ``channels`` and a deconvolution in the mask head (28 × 28 masks); detections: score > ``min_score``,
    NMS 0.5, at most ``detections_per_image``. ``mask_loss``, ``pairwise_weight`` and ``pairwise_threshold``:
    :class:`DropLossRoIHeads`. The box and mask heads read each region from the pyramid level of its box's size
    (FPN, Lin et al. CVPR 2017, Eq. 1: a 224-px box at stride 16).
    """
    pyramid = SimpleFeaturePyramid(embed_dim, channels, scales)
    strides = pyramid.strides
    anchors = AnchorGenerator(tuple((8 * stride,) for stride in strides), ((0.5, 1.0, 2.0),) * len(strides))
    rpn = RegionProposalNetwork(anchors, RPNHead(channels, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                                batch_size_per_image=256, positive_fraction=0.5,
                                pre_nms_top_n={"training": 2000, "testing": 1000},
                                post_nms_top_n={"training": 2000, "testing": 1000}, nms_thresh=0.7)
    names = [str(i) for i in range(len(pyramid.scales))]
    representation = 4 * channels
    roi_heads = DropLossRoIHeads(
        MultiScaleRoIAlign(names, 7, 2), TwoMLPHead(channels * 7 * 7, representation),
        FastRCNNPredictor(representation, 2), 0.5, 0.5, rois_per_image, 0.25, None, min_score, 0.5,
        detections_per_image, MultiScaleRoIAlign(names, 14, 2),
        MaskRCNNHeads(channels, (channels,) * 4, 1),
        MaskRCNNPredictor(channels, channels, 2), drop_iou=drop_iou, mask_loss=mask_loss,
        pairwise_weight=pairwise_weight, pairwise_threshold=pairwise_threshold)
    return InstanceSegmenter(TokenStandardiser(embed_dim), pyramid, rpn, roi_heads, backbone)
