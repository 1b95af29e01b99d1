"""ONNX export: both encoders, dynamic batch (and text length), within 1e-4 of PyTorch in onnxruntime."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import tiny_model
from maskclip import onnx_export
from maskclip.cli import main
from maskclip.errors import InputError, InputTypeError

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
CAPTIONS = ["a", "a red circle", "a small purple cross left of a big green star on a striped background",
            "two", "a very long caption " * 20]  # the last is cut at the context length


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """``maskclip export-onnx`` of the tiny model, saved to a folder."""
    root = tmp_path_factory.mktemp("onnx")
    model.save_pretrained(root / "model")
    assert main(["export-onnx", str(root / "model"), str(root / "export")]) == 0
    return root / "export"


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_writes_the_two_graphs_the_tokenizer_and_the_json_with_no_temp_files(exported):
    meta = json.loads((exported / "onnx_config.json").read_text())
    assert sorted(os.listdir(exported)) == meta["files"]
    assert {"image_encoder.onnx", "text_encoder.onnx", "vocab.json", "merges.txt"} <= set(meta["files"])
    assert meta["image_encoder"]["inputs"]["pixel_values"]["shape"] == ["batch", 3, 64, 64]
    assert meta["text_encoder"]["inputs"]["input_ids"]["max_length"] == 77


def test_graph_inputs_have_a_dynamic_batch_and_a_dynamic_text_length(exported):
    def dims(path):
        graph = onnx.load(str(path), load_external_data=False).graph
        (value,) = graph.input
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    batch, *rest = dims(exported / "image_encoder.onnx")
    assert isinstance(batch, str) and rest == [3, 64, 64]
    batch, length = dims(exported / "text_encoder.onnx")
    assert isinstance(batch, str) and isinstance(length, str) and batch != length


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_image_encoder_matches_pytorch_for_any_batch(exported, model, batch):
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    (got,) = session(exported / "image_encoder.onnx").run(None, {"pixel_values": x.numpy()})
    with torch.inference_mode():
        want = model.encode_image(x)
    assert got.shape == (batch, 32)
    np.testing.assert_allclose(got, want.numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("length", [77, 30, None], ids=["full", "cut-30", "cut-at-longest"])
def test_text_encoder_matches_pytorch_for_any_batch_and_length(exported, model, length):
    ids = model.tokenize(CAPTIONS[:4] if length != 77 else CAPTIONS)
    ids = ids[:, :length or int(ids.argmax(-1).max()) + 1]
    (got,) = session(exported / "text_encoder.onnx").run(None, {"input_ids": ids.numpy()})
    with torch.inference_mode():
        want = model.encode_text(ids)
    np.testing.assert_allclose(got, want.numpy(), atol=TOL, rtol=0)


def test_text_encoder_matches_pytorch_on_a_batch_it_runs_in_length_buckets(exported, model):
    texts = [CAPTIONS[i % 4] + " " * (i % 3) + "x" * (i % 5) for i in range(40)]  # > 32: buckets in PyTorch
    ids = model.tokenize(texts)
    (got,) = session(exported / "text_encoder.onnx").run(None, {"input_ids": ids.numpy()})
    with torch.inference_mode():
        want = model.encode_text(ids)
    np.testing.assert_allclose(got, want.numpy(), atol=TOL, rtol=0)


def test_the_folder_alone_classifies_as_maskclip_does(exported, model, rgb_image):
    """Only the JSON, the tokenizer files, torchvision's transforms and onnxruntime: maskclip's probabilities."""
    from torchvision import transforms as T
    from transformers import CLIPTokenizer

    meta = json.loads((exported / "onnx_config.json").read_text())
    pp = meta["preprocess"]
    preprocess = T.Compose([T.Resize(pp["image_size"], interpolation=T.InterpolationMode.BICUBIC),
                            T.CenterCrop(pp["image_size"]), T.ToTensor(), T.Normalize(pp["mean"], pp["std"])])
    labels = ["a red circle", "a blue square", "a green triangle on a white background"]
    tokenizer = CLIPTokenizer.from_pretrained(str(exported))  # pads with end_of_text, not 0: pooling ignores it
    ids = tokenizer(labels, padding=True, return_tensors="np").input_ids.astype(np.int64)
    (image,) = session(exported / meta["image_encoder"]["file"]).run(None, {"pixel_values": preprocess(rgb_image)[None].numpy()})
    (text,) = session(exported / meta["text_encoder"]["file"]).run(None, {"input_ids": ids})
    image /= np.linalg.norm(image, axis=-1, keepdims=True)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    logits = meta["logit_scale"] * image @ text.T
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probs, model.classify(rgb_image, labels).numpy(), atol=TOL, rtol=0)


def test_a_failed_export_leaves_the_previous_export_untouched(exported, model, monkeypatch):
    before = {name: (exported / name).read_bytes() for name in os.listdir(exported)}

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "_export_programs", fail)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(model, exported)
    assert {name: (exported / name).read_bytes() for name in os.listdir(exported)} == before


def test_bad_arguments_are_refused_before_any_export(model, tmp_path):
    with pytest.raises(InputTypeError, match="DualEncoder"):
        onnx_export.export_onnx("tiny-shapes", tmp_path)
    with pytest.raises(InputError, match="opset"):
        onnx_export.export_onnx(model, tmp_path, opset=11)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        onnx_export.export_onnx(model, tmp_path / "file")


@pytest.mark.slow
def test_a_half_precision_model_exports_float32_graphs_with_external_weights_and_stays_as_it_was(tmp_path,
                                                                                                 monkeypatch):
    # Towers past 2 GB get their weights in a .data file beside the graph; forced here for a tiny one.
    save = torch.onnx.ONNXProgram.save
    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", lambda self, path: save(self, path, external_data=True))
    half = tiny_model(seed=5).to(torch.bfloat16).train()
    onnx_export.export_onnx(half, tmp_path)
    assert half.training and half.dtype == torch.bfloat16
    assert {"image_encoder.onnx.data", "text_encoder.onnx.data"} <= set(os.listdir(tmp_path))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
    reference = tiny_model(seed=5)
    reference.load_state_dict(half.state_dict())  # the bf16 weights, widened exactly
    x = torch.randn(2, 3, 64, 64)
    (got,) = session(tmp_path / "image_encoder.onnx").run(None, {"pixel_values": x.numpy()})
    with torch.inference_mode():
        np.testing.assert_allclose(got, reference.encode_image(x).numpy(), atol=TOL, rtol=0)
