"""The ONNX engine: signature reading, batching, devices, errors, and export parity with torch."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bidsapp.demo.train_legacy import INPUT_NAME, OUTPUT_NAME, LesionUNet, export_onnx, net_from_onnx, parity
from bidsapp.engine.onnx import OnnxModel, providers_for
from bidsapp.errors import ModelError


def _perturbed_net(seed: int) -> LesionUNet:
    """A fresh net whose weights are all distinct (freshly initialised biases can coincide)."""
    torch.manual_seed(seed)
    net = LesionUNet()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    net = _perturbed_net(0)
    path = export_onnx(net, tmp_path_factory.mktemp("onnx") / "t2_lesion.onnx", {"task": "t2", "x": "1"})
    return net, path


@pytest.fixture(scope="module")
def patches():
    rng = np.random.default_rng(3)
    return rng.normal(0, 1.5, size=(3, 1, 48, 48, 48)).astype(np.float32)


def test_signature_is_the_official_one(exported):
    _, path = exported
    model = OnnxModel(path, device="cpu")
    assert (model.input_name, model.output_name) == (INPUT_NAME, OUTPUT_NAME) == ("input_1", "predictions")
    assert model.patch_shape == (48, 48, 48)
    assert model.fixed_batch is None               # dynamic batch, SCT feeds 1
    assert model.metadata == {"task": "t2", "x": "1"}
    assert model.provider == "CPUExecutionProvider"
    out_meta = model.session.get_outputs()[0]
    assert out_meta.shape[1:] == [1, 48, 48, 48] and out_meta.type == "tensor(float)"


def test_export_parity_with_torch(exported, patches):
    net, path = exported
    assert parity(net, path, patches) <= 1e-4
    # the weights in the file are the net's: a net rebuilt from them gives the same numbers
    assert parity(net_from_onnx(path), path, patches) <= 1e-4


def test_run_outputs_probabilities_per_patch(exported, patches):
    _, path = exported
    model = OnnxModel(path)
    out = model.run(patches)
    assert out.shape == patches.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    one_by_one = np.concatenate([model.run(patches[i:i + 1]) for i in range(len(patches))])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)
    assert model.run(np.zeros((0, 1, 48, 48, 48), np.float32)).shape == (0, 1, 48, 48, 48)


def test_fixed_batch_file_is_fed_one_patch_at_a_time(tmp_path, patches):
    net = _perturbed_net(1)
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 48, 48, 48),), str(path), input_names=["input_1"],
                      output_names=["predictions"], opset_version=17, dynamo=False)
    model = OnnxModel(path)
    assert model.fixed_batch == 1
    out = model.run(patches)
    with torch.inference_mode():
        expected = net(torch.from_numpy(patches)).numpy()
    assert out.shape == patches.shape
    assert np.abs(out - expected).max() <= 1e-4


def test_wrong_batch_shape_is_refused(exported):
    model = OnnxModel(exported[1])
    with pytest.raises(ValueError, match="expected"):
        model.run(np.zeros((1, 1, 32, 48, 48), np.float32))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(tmp_path / "nope.onnx")
    bad = tmp_path / "t2_lesion.onnx"
    bad.write_bytes(b"this is not an onnx file")
    with pytest.raises(ModelError, match=r"t2_lesion\.onnx: cannot load ONNX model"):
        OnnxModel(bad)


def test_devices():
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert providers_for("auto")[0] == ("CUDAExecutionProvider" if has_cuda else "CPUExecutionProvider")
    if has_cuda:
        assert providers_for("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    else:
        with pytest.raises(ModelError, match="no CUDA provider"):
            providers_for("cuda")
    with pytest.raises(ModelError, match="expected cpu"):
        providers_for("tpu")
