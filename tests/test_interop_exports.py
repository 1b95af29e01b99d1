"""What works today: maskclip's open_clip and transformers exports run in those libraries with maskclip's probabilities."""
import pytest
import torch

import maskclip
from maskclip.datasets import SyntheticShapes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """A plain-ViT model (OpenAI layout: what open_clip and transformers hold) with random weights and a
    large logit scale, so its probabilities are far from uniform. (The bundled tiny-shapes has a
    convolutional stem, which neither library can hold; its export is refused, tested below.)"""
    import math

    from conftest import tiny_model

    m = tiny_model(seed=3)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(100.0))
    return m


def images_and_labels(size):
    """6 synthetic test images of ``size`` px and 6 class names, those of the images first."""
    ds = SyntheticShapes("test", size=size, n=6, seed=1, label="colour_shape")
    samples = [ds[i] for i in range(len(ds))]
    labels = list(dict.fromkeys(s.meta["label_name"] for s in samples))
    labels += [name for name in ds.classnames if name not in labels][:6 - len(labels)]
    return [s.image for s in samples], labels


def test_open_clip_runs_the_open_clip_export_from_local_dir_with_maskclip_probabilities(model, tmp_path):
    import open_clip

    images, labels = images_and_labels(96)  # resized to the model's 64 px by each library
    model.save_pretrained(tmp_path, format="open_clip")
    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path}")
    oc.eval()
    with torch.no_grad():
        image = oc.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        text = oc.encode_text(tokenizer(labels), normalize=True)
        probs = (oc.logit_scale.exp() * image @ text.T).softmax(dim=-1)
    expected = model.classify(images, labels)
    assert expected.max() > 2 / len(labels)  # not uniform: the comparison has something to compare
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


# At the model's own size no image is resized and the probabilities agree to float rounding. Resized,
# transformers' image processor gives pixels up to one grey level (0.015 normalised) from PIL's, which
# maskclip and open_clip use: the model is the same, the probabilities move by a few 1e-4.
@pytest.mark.parametrize("size, atol", [(64, 1e-5), (96, 1e-3)])
def test_transformers_zero_shot_pipeline_runs_the_transformers_export_with_maskclip_probabilities(
        model, tmp_path, size, atol):
    from transformers import pipeline

    images, labels = images_and_labels(size)
    model.save_pretrained(tmp_path, format="transformers")
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path), device="cpu")
    rows = classifier(images, candidate_labels=labels, hypothesis_template="{}")  # maskclip's templates=None
    probs = torch.tensor([[{r["label"]: r["score"] for r in row}[label] for label in labels] for row in rows])
    expected = model.classify(images, labels)
    assert expected.max() > 2 / len(labels)
    torch.testing.assert_close(probs, expected, atol=atol, rtol=0)
