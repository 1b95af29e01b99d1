"""``maskclip segment``'s method options: --refine, --proxy (ProxyCLIP), --sfr (ResCLIP's SFR)."""
import numpy as np
import pytest
import torch
from PIL import Image

import maskclip
from maskclip import proxy as proxies, refine
from maskclip.cli import build_parser, main

from test_cli import _option

LABELS = ["red", "blue", "green"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_model

    folder = tmp_path_factory.mktemp("cli_segment") / "tiny"
    tiny_model(seed=3).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
    return str(path)


def _printed_shares(out: str) -> dict:
    """The label -> percentage lines ``segment`` prints after ``wrote``."""
    lines = [line.split() for line in out.strip().splitlines()[1:]]
    return {label: share for share, label in lines}


def _shares(label_map, labels) -> dict:
    counts = label_map.flatten().bincount(minlength=len(labels)).tolist()
    return {label: f"{c / label_map.numel():.2%}" for label, c in zip(labels, counts)}


def _run(image, model_dir, tmp_path, *flags):
    out = tmp_path / "overlay.png"
    code = main(["segment", image, "--labels", *LABELS, "--out", str(out), "--model", model_dir, *flags])
    return code, out


@pytest.mark.parametrize("flags, kwargs", [
    (["--method", "naclip", "--refine", "pamr"], dict(method="naclip", refine="pamr")),
    (["--method", "resclip", "--sfr"], dict(method="resclip", sfr=True)),
    (["--method", "resclip", "--sfr", "--refine", "pamr", "--window", "32"],
     dict(method="resclip", sfr=True, refine="pamr", window=32)),
])
def test_segment_options_give_what_segment_gives(flags, kwargs, image, model_dir, tmp_path, capsys):
    code, out = _run(image, model_dir, tmp_path, *flags)
    assert code == 0 and Image.open(out).width > 70
    expected = maskclip.load(model_dir).segment(maskclip.transforms.load_image(image), LABELS, **kwargs)
    assert _printed_shares(capsys.readouterr().out) == _shares(expected, LABELS)


def _tiny_proxy():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                            dynamic_img_size=True, dynamic_img_pad=True)
    return proxies.Proxy(vit.eval())


def test_segment_proxy_runs_proxyclip_with_the_named_proxy(image, model_dir, tmp_path, capsys, monkeypatch):
    built, proxy = [], _tiny_proxy()
    monkeypatch.setattr(proxies.Proxy, "from_timm", classmethod(lambda cls, name: built.append(name) or proxy))
    code, _ = _run(image, model_dir, tmp_path, "--proxy", "dino_vitb16", "--refine", "pamr")
    assert code == 0 and built == ["dino_vitb16"]
    expected = maskclip.load(model_dir).segment(maskclip.transforms.load_image(image), LABELS, method="proxyclip",
                                                proxy=proxy, refine="pamr")
    assert _printed_shares(capsys.readouterr().out) == _shares(expected, LABELS)


@pytest.mark.parametrize("flags, words", [
    (["--sfr"], "--sfr (ResCLIP's semantic feedback refinement) needs --method resclip; got clearclip"),
    (["--method", "naclip", "--sfr"], "needs --method resclip; got naclip"),
    (["--proxy", "dino_vitb8", "--method", "naclip"], "give one of them, not both"),
    (["--proxy", "dino_vitb8", "--sfr"], "needs --method resclip; got proxyclip"),
])
def test_segment_option_misuse_is_a_one_line_error_before_the_model_loads(flags, words, image, tmp_path, capsys):
    code = main(["segment", image, "--labels", "a", "--out", str(tmp_path / "o.png"), "--model", "no-such-model",
                 *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err  # the flags are refused, not the model


def test_segment_unknown_proxy_and_refinement_are_one_line_errors(image, model_dir, tmp_path, capsys):
    code, _ = _run(image, model_dir, tmp_path, "--proxy", "no_such_vit")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "proxy must be one of ['dino_vitb8'" in err and "'no_such_vit'" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        _run(image, model_dir, tmp_path, "--refine", "crf")
    assert e.value.code == 2 and "invalid choice: 'crf'" in capsys.readouterr().err


def test_segment_choices_are_the_constants_they_mirror(capsys):
    p = build_parser()
    assert tuple(_option(p, "segment", "--refine").choices) == refine.REFINEMENTS
    assert _option(p, "segment", "--method").default is None  # clearclip, unless --proxy makes it proxyclip
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in proxies.PROXIES) and "pamr" in help_text
