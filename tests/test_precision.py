"""Reduced precision in the engine (issue 16): which precision a machine gets, fp32 unchanged to the
byte, and bf16 agreeing with fp32 on the trained demo models.

The detection is mocked with :class:`CpuFeatures` values, so every rule is checked on any machine. A
CPU without bfloat16 instructions runs bf16 emulated (float32 kernels on operands rounded to bf16); a
test pretending the CPU has them drives the native path (torch's bf16 kernels, slow reference loops on
such a CPU, so only on the tiny checkpoints) and checks that the emulation models it.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_phantoms import held_out_phantom
from engine_models import build_folder, dice, make_image, one_torch_thread  # noqa: F401

from bidsapp import models
from bidsapp.engine import NnUNetModel, NnUNetPredictor, nnunet, precision, sliding
from bidsapp.engine.precision import CpuFeatures, is_emulated, parse_cpu_flags, resolve_precision

pytestmark = pytest.mark.timeout(600)

AVX2 = CpuFeatures(torch_bf16=False, torch_fp16=False, capability="AVX2",
                   flags=frozenset({"fma", "avx", "avx2", "f16c"}))  # AMD EPYC Zen 3, as on the dev VM
AVX512 = CpuFeatures(True, False, "AVX512", frozenset({"avx2", "avx512f", "avx512bw", "avx512vl"}))
AVX512_BF16 = CpuFeatures(True, False, "AVX512", AVX512.flags | {"avx512_bf16", "avx512_vnni"})
SAPPHIRE = CpuFeatures(True, True, "AVX512", AVX512.flags | {"amx_bf16", "amx_tile", "avx512_fp16"})


# ---- which precision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("features,device,expected", [
    # SCT's arithmetic on every CPU: a mask must not depend on the CPU model (issue 22)
    (AVX2, "cpu", "fp32"),
    (AVX512, "cpu", "fp32"),
    (AVX512_BF16, "cpu", "fp32"),
    (SAPPHIRE, "cpu", "fp32"),
    (CpuFeatures(True, True, "AMX", None), "cpu", "fp32"),
    (AVX2, "cuda", "fp16"), (AVX512_BF16, "cuda:1", "fp16"),  # nnU-Net's GPU mode
    (AVX512_BF16, "mps", "fp32"),
])
def test_auto_resolution(features, device, expected):
    assert resolve_precision("auto", device, features) == expected


def test_explicit_precisions_are_kept_and_unknown_refused():
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, "cpu", AVX2) == name
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", "cpu", AVX2)


def test_emulation_rules():
    assert is_emulated("bf16", "cpu", AVX2) and is_emulated("bf16", "cpu", AVX512)
    assert not is_emulated("bf16", "cpu", AVX512_BF16) and not is_emulated("fp32", "cpu", AVX2)
    assert is_emulated("fp16", "cpu", AVX512_BF16) and not is_emulated("fp16", "cpu", SAPPHIRE)
    assert not is_emulated("fp16", "cuda", AVX2)


def test_cpu_flags_parsing_and_this_machine():
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512_bf16\n\nprocessor\t: 1"
    assert parse_cpu_flags(text) == {"fpu", "sse", "avx2", "avx512_bf16"}
    assert parse_cpu_flags("no flags here") is None
    here = precision.cpu_features()
    assert here.capability == torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        assert here.flags == parse_cpu_flags(cpuinfo.read_text())
        native = bool(here.flags & {"avx512_bf16", "amx_bf16"}) and here.torch_bf16
        assert here.native("bf16") == native and is_emulated("bf16", "cpu") == (not native)
    assert resolve_precision("auto", "cpu") == "fp32"  # on this CPU too, whatever it has


def test_resolving_imports_no_torch():
    code = ("import sys; from bidsapp.engine.precision import resolve_precision, CpuFeatures; "
            "f = CpuFeatures(True, False, 'AVX512', frozenset({'avx512_bf16'})); "
            "assert resolve_precision('auto', 'cpu', f) == 'fp32'; "
            "assert resolve_precision('auto', 'cuda') == 'fp16'; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---- fp32: today's outputs, byte for byte ---------------------------------------------------------------
def _frozen_window_sum(network, data, patch, num_classes, run, *, out=None, region=None):
    """The float32 window loop as it was before reduced precisions (sliding.py at f738fd8), with the sum
    in float16 as nnunetv2's ``_internal_predict_sliding_window_return_logits`` keeps it (issue 22): the
    oracle of "fp32 is the plain float32 network, nothing else changed"."""
    import itertools
    patch = tuple(int(p) for p in patch)
    padded, unpad = sliding.pad_to_patch(data, patch)
    spatial = tuple(padded.shape[1:])
    acc = torch.zeros((num_classes, *spatial), dtype=torch.half)
    g = torch.from_numpy(sliding.gaussian_weights(patch)).to(run.device)
    mirror = sliding.mirror_combinations(run.mirror_axes)
    slicers = [tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
               for starts in itertools.product(*sliding.tile_starts(spatial, patch, run.step))]
    if region is not None:
        region = [slice(r.start + u.start, r.stop + u.start) for r, u in zip(region, unpad, strict=True)]
        slicers = [t for t in slicers
                   if all(a.start < b.stop and b.start < a.stop for a, b in zip(t, region, strict=True))]
    padded = padded.to(run.device)
    for i in range(0, len(slicers), run.batch_size):
        batch = slicers[i:i + run.batch_size]
        x = torch.stack([padded[(slice(None), *s)] for s in batch])
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        logits = network(x)
        for axes in mirror:
            logits += torch.flip(network(torch.flip(x, axes)), axes)
        if mirror:
            logits /= len(mirror) + 1
        logits = logits.float()
        logits *= g
        logits = logits.cpu()
        for j, s in enumerate(batch):
            acc[(slice(None), *s)] += logits[j]
    acc = acc[(slice(None), *unpad)]
    if out is None:
        return acc
    out += acc
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision_models")
    return {net: build_folder(root / net, net) for net in ("PlainConvUNet", "ResidualEncoderUNet")}


@pytest.mark.parametrize("tta", [False, True], ids=["tta_off", "tta_on"])
def test_fp32_is_byte_identical_to_the_float32_path(tiny, monkeypatch, tta):
    img = make_image("resample", seed=3)
    roi = (slice(4, 20), slice(2, 9), slice(10, 30))
    for folder in tiny.values():
        pred = NnUNetPredictor(NnUNetModel.load(folder), precision="fp32", tta=tta)
        assert pred.precision == "fp32" and not pred.precision_emulated and pred._autocast is None
        fresh = NnUNetModel.load(folder).state_dicts[0]
        state = pred.network.state_dict()
        assert all(torch.equal(state[k], v) and state[k].dtype == torch.float32 for k, v in fresh.items())
        got = [pred.predict(img), pred.predict(img, roi=roi)]
        monkeypatch.setattr(nnunet, "sliding_window_logits", _frozen_window_sum)
        ref = [pred.predict(img), pred.predict(img, roi=roi)]
        monkeypatch.undo()
        for a, b in zip(got, ref, strict=True):
            assert a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes()
        # negative control: bf16 does change the bytes
        bf16 = NnUNetPredictor(NnUNetModel.load(folder), precision="bf16", tta=tta).predict(img)
        assert bf16.tobytes() != got[0].tobytes()


# ---- bf16: how it runs -----------------------------------------------------------------------------------
def _conv_and_norm_params(pred):
    convs = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
    conv = [p for m in pred.network.modules() if isinstance(m, convs) for p in m.parameters(recurse=False)]
    norm = [p for m in pred.network.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()]
    return conv, norm


def test_native_bf16_weights_converted_once_and_emulation_models_it(tiny, monkeypatch, caplog):
    """Pretending the CPU has bf16 drives the native path: convolution weights bf16 (channels-last, shared
    tensors still one), norms float32, autocast on. Its outputs are closer to the emulation's than to
    fp32's: the emulation (what this CPU runs) reproduces bf16 arithmetic. Random-weight figures are
    printed (random networks amplify rounding; the trained models are checked below)."""
    img = make_image("las", seed=1)
    for name, folder in tiny.items():
        ref = NnUNetPredictor(NnUNetModel.load(folder), precision="fp32").predict(img)
        monkeypatch.setattr(precision, "cpu_features", lambda: AVX2)
        with caplog.at_level(logging.WARNING, logger="bidsapp.engine.nnunet"):
            emulated = NnUNetPredictor(NnUNetModel.load(folder), precision="bf16")
        assert emulated.precision_emulated and emulated._autocast is None
        assert "emulated" in caplog.text and "avx2" in caplog.text
        conv, norm = _conv_and_norm_params(emulated)
        assert all(p.dtype == torch.float32 and torch.equal(p, p.to(torch.bfloat16).float()) for p in conv)
        emu = emulated.predict(img)
        monkeypatch.setattr(precision, "cpu_features", lambda: AVX512_BF16)
        model = NnUNetModel.load(folder)
        native = NnUNetPredictor(model, precision="bf16")  # asked for, on a bf16 CPU
        assert native.precision == "bf16" and not native.precision_emulated
        assert native._autocast is torch.bfloat16
        conv, norm = _conv_and_norm_params(native)
        assert conv and all(p.dtype == torch.bfloat16 for p in conv)
        assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in conv if p.dim() == 5)
        assert norm and all(p.dtype == torch.float32 for p in norm)
        state = model.state_dicts[0]
        shared = [k for k in state if k.startswith("decoder.encoder.")]
        assert shared and all(state[k] is state[k[len("decoder."):]] for k in shared)
        nat = native.predict(img)
        assert nat.dtype == np.float32 and np.allclose(nat.sum(0), 1, atol=1e-5)
        d_emu, m_emu = dice(nat.argmax(0) == 1, emu.argmax(0) == 1), float(np.abs(nat - emu).mean())
        d_ref, m_ref = dice(nat.argmax(0) == 1, ref.argmax(0) == 1), float(np.abs(nat - ref).mean())
        print(f"{name} random weights: native-vs-fp32 Dice {d_ref:.4f} mean|dp| {m_ref:.5f}; "
              f"native-vs-emulated Dice {d_emu:.4f} mean|dp| {m_emu:.5f}")
        assert d_emu >= 0.99 and m_emu < m_ref
        # a model object serves one precision (its weights were converted in place)
        with pytest.raises(ValueError, match="load the model again"):
            NnUNetPredictor(model, precision="fp32")
        monkeypatch.undo()


# ---- bf16 vs fp32 on trained models ------------------------------------------------------------------------
#: the demo models' held-out phantoms (tests/demo_phantoms.py: never used in training)
CASES = [("spinalcord", "T2w"), ("spinalcord", "T2starw"), ("spinalcord", "UNIT1"),
         ("lesion_ms", "T2w"), ("lesion_ms", "T2starw"), ("lesion_ms_mp2rage", "UNIT1")]


@pytest.mark.parametrize("task,contrast", CASES)
def test_bf16_agrees_with_fp32_on_the_demo_models(task, contrast):
    """Issue 16's criteria on trained models: Dice >= 0.99 per image and mean |p diff| <= 0.01 (native
    bf16 where the CPU has it, emulated elsewhere), and the fp32 result matches the ground truth."""
    folder = models.locate(task, demo=True).path
    fp32 = NnUNetPredictor(NnUNetModel.load(folder), precision="fp32")
    bf16 = NnUNetPredictor(NnUNetModel.load(folder), precision="bf16")
    truth_of = "cord" if task == "spinalcord" else "lesion"
    for i in (800, 801):
        ph = held_out_phantom(contrast, i)
        ref, got = fp32.predict(ph.image), bf16.predict(ph.image)
        a, b = ref.argmax(0) != 0, got.argmax(0) != 0
        truth = np.asarray(getattr(ph, truth_of).dataobj) > 0
        assert truth.any() and dice(a, truth) > 0.5, f"{task} {contrast} {i}: fp32 is no segmentation"
        d, mad = dice(a, b), float(np.abs(ref - got).mean())
        print(f"{task} {contrast} {ph.image.shape} bf16{' (emulated)' * bf16.precision_emulated}: "
              f"Dice {d:.5f} mean|dp| {mad:.2e}")
        assert d >= 0.99 and mad <= 0.01, (task, contrast, i, d, mad)
