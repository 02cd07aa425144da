"""A class-agnostic Mask R-CNN over a ViT's token grid (the model of the instances stage, :mod:`unseg.instances`).

The pieces are torchvision's (``RegionProposalNetwork``, ``RoIHeads``, ``MultiScaleRoIAlign``, the Faster R-CNN
box head and the Mask R-CNN mask head); what is ours is how the ViT feeds them:

* **The model frame.** Every token is :data:`FRAME_STRIDE` (16) model pixels wide, whatever the backbone's patch
  size: an image with an (h, w) token grid is a (16h, 16w) "image" to the detector. torchvision infers each pyramid
  level's scale as a power of two of the image size over the level's size, which a 14-px patch (DINOv2) would break;
  in the model frame the levels' strides are exactly 4, 8, 16 and 32. :mod:`unseg.instances` maps targets into the
  frame and detections back to the original pixels with the feature store's geometry.
* **A simple feature pyramid** (ViTDet, Li et al. ECCV 2022, section 3 "Simple feature pyramid", Fig. 2c): the last
  block's (B, D, h, w) token grid deconvolved to scales 4 and 2, kept at 1 and max-pooled to 0.5, each followed by a
  1×1 and a 3×3 convolution with LayerNorm, plus the usual extra max-pooled level for the RPN's largest anchors.
* **What it reads**: the stored tokens (the frozen backbone's exact output, read from the zarr store), or images
  through the ViT itself (frozen, or its last blocks trained), for augmented inputs; either way standardised per
  channel with the training tokens' statistics before the pyramid.
* **DropLoss** (CutLER, Wang et al. CVPR 2023, Eq. 2): a sampled region whose box overlaps no target box by more
  than ``drop_iou`` (0.01) gives no classification loss, so the model is not taught that an object the pseudo-masks
  missed is background.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou

from .heads import TokenHead

FRAME_STRIDE = 16  # model pixels per token
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)  # ViTDet's simple feature pyramid: strides 4, 8, 16, 32 in the model frame


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


class DropLossRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` whose training classification loss is :func:`drop_loss` (``drop_iou`` None: the
    plain loss). ``last_dropped`` holds the fraction of sampled regions the last training step dropped."""

    def __init__(self, *args, drop_iou: float | None = 0.01, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_iou = drop_iou
        self.last_dropped = 0.0

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or self.drop_iou is None:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        kept = []
        for boxes, target in zip(proposals, targets):
            if target["boxes"].numel() == 0:
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
        loss_mask = maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                  [t["labels"] for t in targets], mask_matched)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}


class InstanceSegmenter(torch.nn.Module):
    """(backbone →) standardise → :class:`SimpleFeaturePyramid` → RPN → RoI heads, in the model frame
    (:data:`FRAME_STRIDE`).

    ``forward(inputs, targets)``: ``inputs`` is a list of per-image tensors: (D, h, w) stored tokens, or, with a
    ``backbone`` (an :class:`unseg.finetune.ImageSegmenter` whose ``tokens`` run the ViT), (3, h·p, w·p)
    normalised images. Items of one size are encoded together; the standardised token grids are zero-padded to the
    batch's largest. Training (``targets``: per image ``boxes`` (N, 4) float model pixels x1, y1, x2, y2,
    ``labels`` (N,) int64 ones, ``masks`` (N, 16h, 16w) uint8) returns the dict of losses; evaluation returns per
    image ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,) and ``masks`` (N, 1, 28, 28) probabilities in the box.

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
        detector = [p for module in (self.pyramid, self.rpn, self.roi_heads) for p in module.parameters()]
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
                    drop_iou: float | None = 0.01, backbone: torch.nn.Module | None = None) -> InstanceSegmenter:
    """A class-agnostic (one foreground class) Mask R-CNN on (B, D, h, w) token grids (of ``backbone`` on images,
    or stored).

    torchvision's Mask R-CNN defaults (He et al. ICCV 2017; torchvision ``maskrcnn_resnet50_fpn``): anchors of
    8 × each level's stride (32..512 px at strides 4..64) with aspect ratios 0.5, 1, 2; RPN IoU 0.7 / 0.3, 256
    anchors per image, NMS 0.7, 2000 / 1000 proposals (train / test); RoI sampling IoU 0.5, ``rois_per_image``
    regions with 25 % positives; a two-layer box head of 4·``channels`` (1024 at 256); four 3×3 convolutions of
    ``channels`` and a deconvolution in the mask head (28 × 28 masks); detections: score > ``min_score``,
    NMS 0.5, at most ``detections_per_image``.
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
        detections_per_image, MultiScaleRoIAlign(names, 14, 2), MaskRCNNHeads(channels, (channels,) * 4, 1),
        MaskRCNNPredictor(channels, channels, 2), drop_iou=drop_iou)
    return InstanceSegmenter(TokenStandardiser(embed_dim), pyramid, rpn, roi_heads, backbone)
