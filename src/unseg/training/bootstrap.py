"""TransFGU's bootstrapping (Yin et al., ECCV 2022, section 3.3): the teacher's aggregation and the student's losses.

Plain functions of tensors, read by the ``transfgu_bootstrap`` trainer (:mod:`unseg.stages.train`) and by the labels of
its
rounds (:func:`unseg.stages.predict.bootstrap_labels`):

* :func:`bootstrapped_scores` — Eq. 12, the initial pseudo-labels M averaged with the teacher's softmax;
* :func:`peer_loss` — Eq. 13, cross-entropy to argmax M̂ minus α × cross-entropy to a channel-shuffled M̂′;
* :func:`uncertainty_loss` — Eq. 14, one minus the gap between the two largest probabilities;
* :func:`diversity_loss` — Eq. 15, as the authors' code computes it (see there);
* :func:`bootstrapping_loss` — Eq. 16, L_peer + ω1·L_div + ω2·L_unc.

Class scores ("targets", M and M̂) are (B, C, h, w) floats on the token grid, channel 0 the background; a cell whose
scores are NaN is ignored (no label there: the pseudo-label PNG's 255).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The authors' code ramps α over the epochs since the last teacher update: 0.03, 0.04, ..., 0.1, then 0.1
# (damo-cv/TransFGU, models/loss/BootstrappingLoss.py, alpha_list); the paper gives no value.
ALPHA_STEP = 0.01


def bootstrapped_scores(initial: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 12: M̂ᵏ = 0.5·(Mᵏ + P̂ᵏ), P̂ the teacher's softmax over classes (Eq. 10); M alone without a teacher.

    Args:
        initial: (B, C, h, w) or (C, h, w) float initial class scores M (NaN cells stay NaN: ignored).
        teacher_logits: the teacher's logits of the same shape, on the same grid ("before upsampled"), or None.

    Returns:
        M̂, the shape of ``initial``, float32.
    """
    if teacher_logits is None:
        return initial.float()
    return 0.5 * (initial.float() + teacher_logits.float().softmax(dim=-3))


def labelled_cells(scores: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) class scores → (B, h, w) bool, True where the cell has scores (no NaN)."""
    return ~scores.isnan().any(dim=1)


def _reduce(values: torch.Tensor, labelled: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum (``"sum"``) or mean (``"mean"``) of (B, h, w) per-cell ``values`` over the labelled cells."""
    total = values.masked_fill(~labelled, 0).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / labelled.sum().clamp(min=1)
    raise ValueError(f"reduction {reduction!r}: 'mean' or 'sum'")


def peer_loss(logits: torch.Tensor, scores: torch.Tensor, permutation: torch.Tensor, alpha: float,
              reduction: str = "mean") -> torch.Tensor:
    """Eq. 13: L_peer = CE(P, M̂) − α·CE(P, M̂′), the peer loss (Liu & Guo 2020) with hard targets.

    The positive target of a cell is argmax M̂; the negative one is argmax M̂′, M̂′ = M̂ with its channels
    reordered by ``permutation`` ("shuffling the K pseudo labels of M̂"), so that a cell is pushed away from the
    class that another class's score map names. As in the authors' code, every channel is shuffled, the background
    included, and a permutation may leave a channel in place (that cell's two terms then share a target).

    Args:
        logits: (B, C, h, w) the student's logits (P is their softmax; CE takes the logits).
        scores: (B, C, h, w) M̂ on the same grid, NaN where ignored.
        permutation: (C,) long, channel c of M̂′ is channel ``permutation[c]`` of M̂.
        alpha: the weight of the negative term.
        reduction: ``"mean"`` over the labelled cells, or their ``"sum"``.

    Returns:
        a 0-dim tensor.
    """
    labelled = labelled_cells(scores)
    scores = scores.nan_to_num(0.0)
    positive = scores.argmax(1)
    negative = scores[:, permutation.to(scores.device)].argmax(1)
    logits = logits.float()
    per_cell = F.cross_entropy(logits, positive, reduction="none") - alpha * F.cross_entropy(logits, negative,
                                                                                             reduction="none")
    return _reduce(per_cell, labelled, reduction)


def uncertainty_loss(logits: torch.Tensor, labelled: torch.Tensor | None = None, reduction: str = "mean",
                     ) -> torch.Tensor:
    """Eq. 14: L_unc = 1 − (1/hw)·Σ (p′ − p″), p′ and p″ the largest and second largest of the C softmax
    probabilities at a location; here over the labelled cells (all cells when ``labelled`` is None).

    Args:
        logits: (B, C, h, w) the student's logits, C ≥ 2.
        labelled: (B, h, w) bool, the cells that count.
        reduction: ``"mean"`` (Eq. 14; 1 − mean gap), or ``"sum"`` over the cells of 1 − gap.

    Returns:
        a 0-dim tensor.
    """
    top_two = logits.float().softmax(1).topk(2, dim=1).values  # (B, 2, h, w)
    per_cell = 1 - (top_two[:, 0] - top_two[:, 1])
    if labelled is None:
        labelled = torch.ones_like(per_cell, dtype=torch.bool)
    return _reduce(per_cell, labelled, reduction)


def diversity_loss(class_embeddings: torch.Tensor) -> torch.Tensor:
    """Eq. 15, as the authors' code computes it: 1 + the mean cosine similarity of the K(K−1)/2 pairs i < j of the
    L2-normalised class embeddings C (damo-cv/TransFGU, models/loss/CLSEmbLoss.py: ``1 + triu(C·Cᵀ, 1)``, averaged).

    The paper writes 1 + (1/K²)·Σ C·Cᵀ/√d over all K² pairs (i, j). For normalised embeddings the diagonal adds the
    constant K and the off-diagonal pairs come twice, so the paper's value is 1 + 1/(K√d) + (K−1)/(K√d) × the mean
    above: an increasing affine function of it, with the same minimiser and gradients scaled by a constant. The
    code's form is kept: its scale does not depend on K or d (ω1 = 1 then means what it meant in the authors' runs),
    1.0 for orthogonal embeddings, 2.0 for identical ones.

    Args:
        class_embeddings: (..., K, d), each row L2-normalised (the decoder's classes of each image,
            :meth:`unseg.training.heads.MaskTransformerHead.logits_and_class_embeddings`).

    Returns:
        (...) float: one value per leading index (a 0-dim tensor for a (K, d) input); 1.0 when K < 2.
    """
    embeddings = class_embeddings.float()
    count = embeddings.shape[-2]
    if count < 2:
        return embeddings.new_ones(embeddings.shape[:-2])
    similarity = embeddings @ embeddings.transpose(-1, -2)  # (..., K, K)
    rows, columns = torch.triu_indices(count, count, offset=1, device=embeddings.device)
    return 1 + similarity[..., rows, columns].mean(-1)


def bootstrapping_loss(logits: torch.Tensor, class_embeddings: torch.Tensor, scores: torch.Tensor,
                       permutation: torch.Tensor, alpha: float, omega_diversity: float = 1.0,
                       omega_uncertainty: float = 0.3, reduction: str = "mean") -> dict[str, torch.Tensor]:
    """Eq. 16: L = L_peer + ω1·L_div + ω2·L_unc (ω1 = 1, ω2 = 0.3 in section 3.3), over a batch.

    The diversity of each image's class embeddings counts once per labelled cell of that image, so that the batch's
    loss is a mean over its labelled cells (and the sum of a batch's pieces, with ``reduction="sum"``, divided by
    the batch's labelled cells, is the loss of the whole batch); with equally labelled images it is the plain mean
    over images.

    Args:
        logits: (B, C, h, w) the student's logits.
        class_embeddings: (B, C, d) its L2-normalised class embeddings of these images.
        scores: (B, C, h, w) the targets M̂, NaN where ignored.
        permutation, alpha: of :func:`peer_loss`.
        reduction: ``"mean"`` over the labelled cells, or ``"sum"``.

    Returns:
        {"loss", "peer_loss", "diversity_loss", "uncertainty_loss"}: 0-dim tensors, ``loss`` the weighted total.
    """
    labelled = labelled_cells(scores)
    peer = peer_loss(logits, scores, permutation, alpha, reduction)
    uncertainty = uncertainty_loss(logits, labelled, reduction)
    cells = labelled.flatten(1).sum(1).float()  # (B,)
    diversity = (diversity_loss(class_embeddings) * cells).sum()
    if reduction == "mean":
        diversity = diversity / cells.sum().clamp(min=1)
    total = peer + omega_diversity * diversity + omega_uncertainty * uncertainty
    return {"loss": total, "peer_loss": peer, "diversity_loss": diversity, "uncertainty_loss": uncertainty}


def alpha_at(epoch: int, alpha: float, alpha_start: float, teacher: bool) -> float:
    """α of Eq. 13 in ``epoch`` (0-based) of a round: from ``alpha_start`` up by :data:`ALPHA_STEP` per epoch to
    ``alpha``, as the authors' code; 0 without a teacher (round 1 trains on M with plain cross-entropy: the code
    adds the negative term only once bootstrapping has started)."""
    if not teacher:
        return 0.0
    return min(alpha, alpha_start + ALPHA_STEP * epoch)
