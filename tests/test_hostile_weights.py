"""Corrupt and hostile weights and configs: a clear error, no code run, nothing half loaded.

Safetensors files are forged byte by byte here (8-byte little-endian header length, JSON header,
data), so every way a file can lie is reachable: truncation, bit flips, a header whose sizes,
offsets, dtypes or keys lie, duplicate keys, odd metadata. Configs are forged the same way, and a
spy on the model class proves a hostile config is refused before anything is allocated.
Pickles carry a ``__reduce__`` that would create a sentinel file: it must never exist.

The tests use a micro model (vocabulary of 300 tokens, ~0.1 MB of weights) so that hundreds of
forged files load in seconds; the promises do not depend on the model's size.
"""
from __future__ import annotations

import json
import pickle
import resource
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, strategies as st
from safetensors.torch import save_file

import maskclip
from factories import offline_hub, write_hub_cache
from fuzzing import budget, count, outcome
from maskclip import ConfigError, MaskCLIP, ModelConfig, WeightsError, build, hub

MICRO = {
    "format_version": 1, "embed_dim": 16, "name": "micro",
    "vision": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "heads": 2},
    "text": {"vocab_size": 300, "context_length": 16, "width": 32, "layers": 2, "heads": 2},
    "preprocess": {"image_size": 32},
}


def micro_model(seed: int = 0) -> MaskCLIP:
    torch.manual_seed(seed)
    model = MaskCLIP(ModelConfig.from_dict(MICRO)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


class Original(tuple):
    """(model, folder, file bytes, header, data offset), with a short repr for hypothesis' reports."""

    def __repr__(self):
        return "<the micro checkpoint>"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The micro model saved as a maskclip folder."""
    model = micro_model()
    folder = tmp_path_factory.mktemp("original")
    model.save_pretrained(folder)
    data = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return Original((model, folder, data, json.loads(data[8:8 + n]), 8 + n))


def forged_folder(root: Path, original, weights: bytes, config: dict = None) -> Path:
    """A checkpoint folder with the original config (or ``config``) beside ``weights``."""
    _, folder, *_ = original
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    if config is None:
        shutil.copy(folder / "config.json", out / "config.json")
    else:
        (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(weights)
    return out


def pack(header, body: bytes, length: int = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def same_weights(model: MaskCLIP, reference: MaskCLIP) -> int:
    """Number of values that differ between the two models' state dicts (shapes must agree)."""
    a, b = model.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    return sum(int((a[k] != b[k]).sum()) for k in a)


# --- truncation and bit flips ------------------------------------------------------------------

@budget(60)
@given(fraction=st.floats(0, 1, exclude_max=True))
@example(fraction=0.0)
def test_a_file_truncated_anywhere_is_refused(tmp_path_factory, original, fraction):
    data = original[2]
    cut = int(len(data) * fraction)
    folder = forged_folder(tmp_path_factory.mktemp("cut"), original, data[:cut])
    _, err = outcome("load(truncated safetensors)", maskclip.load, folder)
    assert isinstance(err, WeightsError) and "truncated or corrupt" in str(err)


@budget(200)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), in_header=st.booleans())
def test_a_bit_flip_is_refused_or_changes_at_most_the_one_value_it_hit(tmp_path_factory, original, where, bit, in_header):
    """A local file has no checksum: a flip in the data that leaves a finite number loads (documented)."""
    model, _, data, _, start = original
    lo, hi = (0, start) if in_header else (start, len(data))
    pos = lo + int((hi - lo) * where)
    flipped = bytearray(data)
    flipped[pos] ^= 1 << bit
    folder = forged_folder(tmp_path_factory.mktemp("flip"), original, bytes(flipped))
    loaded, err = outcome("load(bit-flipped safetensors)", maskclip.load, folder)
    if err is None:
        changed = same_weights(loaded, model)
        assert changed == 0 if in_header else changed <= 1
        count("bit flips loaded with a changed value (no checksum on local files)", "changed" if changed else "same")
    else:
        assert isinstance(err, (WeightsError, ConfigError))


# --- forged headers ----------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "F33", "", 7, None]
huge = st.sampled_from([-1, 0, 1, 3, 2**31, 2**40, 2**63, 2**64, 10**30])
json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                    st.text(max_size=6)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                          max_leaves=6)


@st.composite
def header_lies(draw, header: dict):
    """1-3 lies told by a copy of ``header``; returns (header, length-field delta, body change)."""
    h = json.loads(json.dumps(header))
    keys = sorted(k for k in h if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        lie = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "copy", "rename", "metadata", "entry"]))
        if not isinstance(h.get(key), dict) and lie not in ("metadata", "entry"):
            continue  # dropped or replaced by an earlier lie
        if lie == "dtype":
            h[key]["dtype"] = draw(st.sampled_from(DTYPES))
        elif lie == "shape":
            h[key]["shape"] = draw(st.one_of(st.lists(huge, max_size=3), json_value))
        elif lie == "offsets":
            h[key]["data_offsets"] = draw(st.one_of(st.lists(huge, min_size=2, max_size=2), json_value))
        elif lie == "drop":
            h.pop(key)
        elif lie == "copy":
            h[draw(st.sampled_from(keys)) + draw(st.sampled_from(["", ".x"]))] = dict(h[key])
        elif lie == "rename":
            h[key + "_"] = h.pop(key)
        elif lie == "metadata":
            h["__metadata__"] = draw(json_value)
        else:
            h[key] = draw(json_value)
    length = draw(st.sampled_from([0, 0, 0, 1, -1, 2**63, 2**64 - 1]))
    body = draw(st.sampled_from(["same", "same", "shorter", "longer"]))
    return h, length, body


@budget(200)
@given(data=st.data())
def test_a_header_that_lies_is_refused_without_allocating_or_loads_the_same_weights(tmp_path_factory, original, data):
    model, _, raw, header, start = original
    h, delta, body_change = data.draw(header_lies(header))
    encoded = json.dumps(h).encode()
    length = (len(encoded) + delta) % 2**64 if delta in (0, 1, -1) else delta
    body = {"same": raw[start:], "shorter": raw[start:-5], "longer": raw[start:] + b"\0" * 8}[body_change]
    folder = forged_folder(tmp_path_factory.mktemp("lie"), original, pack(encoded, body, length))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded, err = outcome("load(safetensors with a lying header)", maskclip.load, folder)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 200, f"a forged header made the process grow by {grown_mb:.0f} MB"
    if err is None:
        assert same_weights(loaded, model) == 0
    else:
        assert isinstance(err, (WeightsError, ConfigError))


def _lie(original, **changes):
    """The original file with one tensor entry (logit_scale, 4 bytes at offset 0) changed."""
    _, _, raw, header, start = original
    h = json.loads(json.dumps(header))
    h["logit_scale"].update(changes)
    return pack(h, raw[start:])


def _first_and_second(original):
    header = original[3]
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[:2]


HAND_FORGED = {
    "header length beyond the file": lambda o: pack(b"{}", b"", length=10**6),
    "header length 2**63": lambda o: struct.pack("<Q", 2**63) + o[2][8:],
    "empty file": lambda o: b"",
    "7 bytes": lambda o: b"\x01" * 7,
    "header is not JSON": lambda o: pack(b"{not json", o[2][o[4]:]),
    "header is a JSON array": lambda o: pack([1, 2], o[2][o[4]:]),
    "end offset lies": lambda o: _lie(o, data_offsets=[0, 8]),
    "unknown dtype": lambda o: _lie(o, dtype="F33"),
    "dtype size does not match the bytes": lambda o: _lie(o, dtype="F16"),
    "shape does not match the bytes": lambda o: _lie(o, shape=[7, 7]),
    "negative shape": lambda o: _lie(o, shape=[-1]),
    "huge shape": lambda o: _lie(o, shape=[2**40, 2**40]),
    "huge offsets": lambda o: _lie(o, data_offsets=[0, 2**62]),
    "metadata is not strings": lambda o: pack({**o[3], "__metadata__": {"format": 1}}, o[2][o[4]:]),
    "trailing bytes": lambda o: o[2] + b"\0",
}


@pytest.mark.parametrize("case", sorted(HAND_FORGED))
def test_hand_forged_safetensors_are_refused_as_corrupt(tmp_path, original, case):
    folder = forged_folder(tmp_path, original, HAND_FORGED[case](original))
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        maskclip.load(folder)


def test_overlapping_tensor_ranges_are_refused(tmp_path, original):
    _, _, raw, header, start = original
    first, second = _first_and_second(original)
    h = json.loads(json.dumps(header))
    h[second]["data_offsets"] = list(h[first]["data_offsets"])  # two tensors, one range
    with pytest.raises(WeightsError):
        maskclip.load(forged_folder(tmp_path, original, pack(h, raw[start:])))


def test_duplicate_keys_in_the_header_are_refused(tmp_path, original):
    # JSON parsers disagree on which duplicate wins; safetensors keeps one silently.
    _, _, raw, header, start = original
    text = json.dumps(header)
    text = text[:-1] + ', "logit_scale": ' + json.dumps(header["logit_scale"]) + "}"
    with pytest.raises(WeightsError, match="more than once"):
        maskclip.load(forged_folder(tmp_path, original, pack(text.encode(), raw[start:])))


# --- tensors that do not fit -------------------------------------------------------------------

def _saved(tmp_path, original, sd) -> Path:
    folder = forged_folder(tmp_path, original, b"")
    save_file(sd, str(folder / "model.safetensors"))
    return folder


def _sd(original):
    return {k: v.clone() for k, v in original[0].state_dict().items()}


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd.pop("text.ln_final.bias"), "missing keys: \\['text.ln_final.bias'\\]"),
    (lambda sd: sd.update(extra=torch.zeros(2)), "unexpected keys: \\['extra'\\]"),
    # "²".isdigit() is true but int("²") raises: a plain ValueError escaped while counting blocks
    (lambda sd: sd.update({"visual.transformer.resblocks.².ln_1.bias": torch.zeros(32)}), "unexpected keys"),
    (lambda sd: sd.update(logit_scale=torch.tensor(4, dtype=torch.int32)), "non-float tensors"),
    (lambda sd: sd.update(logit_scale=torch.tensor(True)), "non-float tensors"),
    (lambda sd: sd["visual.proj"].view(-1).__setitem__(3, float("nan")), "NaN or Inf in \\['visual.proj'\\]"),
    (lambda sd: sd["text.text_projection"].view(-1).__setitem__(0, float("inf")), "NaN or Inf"),
    (lambda sd: sd.update({"visual.proj": sd["visual.proj"].T.contiguous()}), "shape mismatches"),
])
def test_tensors_that_do_not_fit_the_config_are_named_in_one_weights_error(tmp_path, original, change, words):
    sd = _sd(original)
    change(sd)
    with pytest.raises(WeightsError, match=words):
        maskclip.load(_saved(tmp_path, original, sd))


def test_a_block_numbered_with_a_non_ascii_digit_is_an_unexpected_key_in_a_lone_file(tmp_path, original):
    # The config is inferred from the keys here; "²".isdigit() is true but int("²") raised ValueError.
    sd = _sd(original)
    sd["visual.transformer.resblocks.².ln_1.bias"] = torch.zeros(32)
    save_file(sd, str(tmp_path / "lone.safetensors"))
    with pytest.raises(WeightsError, match="unexpected keys"):
        maskclip.load(tmp_path / "lone.safetensors")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2])
def test_other_float_dtypes_load_as_their_float32_values(tmp_path, original, dtype):
    # float8_e4m3fn used to escape as NotImplementedError from the NaN check (isfinite).
    sd = {k: v.to(dtype) for k, v in _sd(original).items()}
    loaded = maskclip.load(_saved(tmp_path, original, sd))
    assert loaded.dtype == torch.float32
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k].float()), k


# --- hostile configs ---------------------------------------------------------------------------

@pytest.fixture
def real_builds(monkeypatch):
    """Every ``MaskCLIP`` that ``maskclip.load`` builds off the meta device (i.e. with real memory)."""
    built = []

    def spy(config):
        if torch.get_default_device().type != "meta":
            built.append(config)
        return MaskCLIP(config)

    monkeypatch.setattr(build, "DualEncoder", spy)
    return built


def _config(**changes):
    cfg = json.loads(json.dumps(MICRO))
    cfg.update(config_type="maskclip")
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


HOSTILE_CONFIGS = {
    "a million vision layers": (_config(vision__layers=10**6), WeightsError, "1000000 visual blocks"),
    "a million text layers": (_config(text__layers=10**6), WeightsError, "1000000 text blocks"),
    "width 2**20": (_config(vision__width=2**20), WeightsError, "shape mismatches"),
    "vocabulary 10**9": (_config(text__vocab_size=10**9), WeightsError, "shape mismatches"),
    "context length 2**40": (_config(text__context_length=2**40), WeightsError, "shape mismatches"),
    "MLP ratio 10**6": (_config(vision__mlp_ratio=1e6), WeightsError, "shape mismatches"),
    "image size 2**40": (_config(vision__image_size=2**40), ConfigError, "cannot be built"),
    "MLP ratio 1e308": (_config(text__mlp_ratio=1e308), ConfigError, "MLP width"),
    "MLP ratio as a string": (_config(vision__mlp_ratio="4"), ConfigError, "mlp_ratio"),
    "MLP ratio NaN": (_config(vision__mlp_ratio=float("nan")), ConfigError, "mlp_ratio"),
    "norm eps negative": (_config(text__norm_eps=-1e-5), ConfigError, "norm_eps"),
    "ln_pre a string": (_config(vision__ln_pre="no"), ConfigError, "ln_pre"),
    "sin-cos positions with width 30": (_config(vision__pos_embed="sincos", vision__width=30), ConfigError, "divisible by 4"),
    "mean of 2 values": (_config(preprocess__mean=[0.5, 0.5]), ConfigError, "3 values"),
    "std as a string": (_config(preprocess__std="abc"), ConfigError, "3 values"),
    "logit scale a string": (_config(logit_scale_init="x"), ConfigError, "logit_scale_init"),
    "name a number": (_config(name=5), ConfigError, "name"),
    "layers a float": (_config(vision__layers=2.0), ConfigError, "positive integer"),
    "unknown key": (_config(vision__depth=12), ConfigError, "unknown vision config keys"),
    "format version 2": (_config(format_version=2), ConfigError, "format_version"),
    "format version a string": (_config(format_version="1"), ConfigError, "format_version"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_config_is_refused_before_any_model_is_allocated(tmp_path, original, real_builds, case):
    config, error, words = HOSTILE_CONFIGS[case]
    folder = forged_folder(tmp_path, original, original[2], config)
    with pytest.raises(error, match=words):
        maskclip.load(folder)
    assert real_builds == []


@pytest.mark.parametrize("text", ['{"a":' * 100_000 + "1" + "}" * 100_000, "\xff\xfe not utf-8", "[1, 2]", ""])
def test_config_json_that_is_not_an_object_is_refused(tmp_path, original, text):
    folder = forged_folder(tmp_path, original, original[2])
    (folder / "config.json").write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises((ConfigError, maskclip.ModelNotFoundError)):
        maskclip.load(folder)


config_fields = [("embed_dim",), ("logit_scale_init",), ("name",)] + \
    [("vision", k) for k in ("image_size", "patch_size", "width", "layers", "heads", "mlp_ratio", "act", "norm_eps",
                             "ln_pre", "patch_bias", "pool", "pos_embed")] + \
    [("text", k) for k in ("context_length", "vocab_size", "width", "layers", "heads", "mlp_ratio", "act", "norm_eps")] + \
    [("preprocess", k) for k in ("image_size", "mean", "std", "interpolation", "resize_mode")]
field_value = st.one_of(st.integers(1, 70), st.integers(1, 70), json_value, huge, st.floats(), st.sampled_from(["gelu", "mean", "sincos", "squash", "nearest"]),
                        st.lists(st.floats(), min_size=3, max_size=3))


@budget(200)
@given(changes=st.lists(st.tuples(st.sampled_from(config_fields), field_value), min_size=1, max_size=3))
def test_any_config_is_refused_before_allocating_or_builds_a_model_holding_the_weights(original, changes):
    model = original[0]
    cfg = _config()
    for path, value in changes:
        node = cfg
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    real = []

    def spy(config):
        if torch.get_default_device().type != "meta":
            real.append(config)
        return MaskCLIP(config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "DualEncoder", spy)
        built, err = outcome("config from JSON + build", lambda: build.build_model(ModelConfig.from_dict(cfg),
                                                                                  model.state_dict(), "forged"))
    if err is None:
        assert len(real) == 1 and same_weights(built, model) == 0
    else:
        assert isinstance(err, (ConfigError, WeightsError)) and real == []


# --- pickles -----------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs ``open(path, "w")``: the sentinel file exists iff code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious(path: Path, sentinel: Path, how: str) -> Path:
    obj = {"state_dict": {"visual.proj": Payload(sentinel)}}
    if how == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(how)))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on protocols 4 and 5
@pytest.mark.parametrize("how", ["0", "2", "4", "5", "torch.save"])
@pytest.mark.parametrize("name", ["evil.pt", "evil.bin", "evil.ckpt", "open_clip_pytorch_model.bin", "pytorch_model.bin"])
def test_a_malicious_pickle_never_runs_whether_refused_or_allowed(tmp_path, how, name):
    sentinel = tmp_path / "pwned"
    path = _malicious(tmp_path / name, sentinel, how)
    if name == "open_clip_pytorch_model.bin":
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    target = tmp_path if name.startswith(("open_clip", "pytorch_model")) else path
    if name == "pytorch_model.bin":
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    for allow in (False, True):
        with pytest.raises((WeightsError, ConfigError)) as info:
            maskclip.load(target, allow_pickle=allow)
        message = str(info.value)
        if not allow:
            assert "refusing to load the pickled file" in message or "refusing" in message
        count("malicious pickle (never executed)", f"allow_pickle={allow}")
        assert not sentinel.exists(), "unpickling ran code"


def test_cli_convert_of_a_malicious_pickle_fails_cleanly_without_running_it(tmp_path, capsys):
    from maskclip import cli

    sentinel = tmp_path / "pwned"
    path = _malicious(tmp_path / "evil.pt", sentinel, "torch.save")
    assert cli.main(["convert", str(path), str(tmp_path / "out"), "--allow-pickle"]) == 2
    assert "weights_only" in capsys.readouterr().err
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_a_pickle_named_safetensors_is_refused_as_corrupt_and_never_run(tmp_path):
    sentinel = tmp_path / "pwned"
    path = _malicious(tmp_path / "model.safetensors", sentinel, "2")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        maskclip.load(path)
    assert not sentinel.exists()


checkpoint_value = st.recursive(
    st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5),
              st.sampled_from(["tensor", "int tensor", "scalar"]).map(
                  lambda k: {"tensor": torch.randn(2, 3), "int tensor": torch.arange(3), "scalar": torch.tensor(1.5)}[k])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.sampled_from(["state_dict", "model", "module.visual.proj", "visual.proj", "epoch", "x"]), inner, max_size=3)),
    max_leaves=8)


@budget(80)
@given(obj=checkpoint_value)
def test_any_weights_only_checkpoint_gives_a_documented_error_or_a_model(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    torch.save(obj, path)
    _, err = outcome("load(pickled checkpoint of any structure)", maskclip.load, path, allow_pickle=True)
    assert err is not None  # none of these is a whole CLIP state dict
    assert isinstance(err, (WeightsError, ConfigError))


# --- nothing half loaded -----------------------------------------------------------------------

@pytest.mark.parametrize("spoil", ["nan in the last tensor", "last tensor misshapen", "extra key", "int tensor"])
def test_a_refused_state_dict_leaves_the_model_exactly_as_it_was(original, spoil):
    model = micro_model(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = _sd(original)
    last = list(sd)[-1]
    if spoil == "nan in the last tensor":
        sd[last].view(-1)[-1] = float("nan")
    elif spoil == "last tensor misshapen":
        sd[last] = torch.zeros(sd[last].numel() + 1)
    elif spoil == "extra key":
        sd["extra"] = torch.zeros(1)
    else:
        sd[last] = sd[last].long()
    with pytest.raises(WeightsError):
        build.load_state_dict(model, sd)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_failed_load_leaves_a_loaded_model_and_the_files_untouched(tmp_path, original):
    good = maskclip.load(original[1])
    state = {k: v.clone() for k, v in good.state_dict().items()}
    bad = forged_folder(tmp_path / "bad", original, original[2][:-10])
    files = {p: p.read_bytes() for p in bad.iterdir()}
    with pytest.raises(WeightsError):
        maskclip.load(bad)
    assert all(torch.equal(good.state_dict()[k], v) for k, v in state.items())
    assert {p: p.read_bytes() for p in bad.iterdir()} == files


@pytest.mark.parametrize("fault", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_save_that_fails_midway_keeps_the_previous_checkpoint_whole(tmp_path, original, monkeypatch, fault):
    folder = tmp_path / "ckpt"
    original[0].save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    import maskclip.serialization as serialization

    def half_then_fail(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 1000)  # part of a file, then the fault
        raise fault

    monkeypatch.setattr(serialization, "save_file", half_then_fail)
    with pytest.raises(type(fault)):
        micro_model(seed=2).save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp file, old bytes intact
    count("faults injected into save_pretrained", type(fault).__name__)
    monkeypatch.undo()
    assert same_weights(maskclip.load(folder), original[0]) == 0


# --- registry sha256 ---------------------------------------------------------------------------

@pytest.fixture
def registered(tmp_path, original, monkeypatch):
    """A registry entry "micro-test" served from an offline Hub cache; returns (blob path, sha256)."""
    snapshot = write_hub_cache(offline_hub(monkeypatch, tmp_path / "hub"), "org/micro", original[1], move=False)
    blob = (snapshot / "model.safetensors").resolve()
    entry = {"repo": "org/micro", "layout": "maskclip", "config_file": "config.json",
             "weights_file": "model.safetensors", "sha256": blob.name, "weights_available": True}
    monkeypatch.setattr(hub, "registry", lambda: {"micro-test": entry})
    return blob, entry


def test_registered_weights_with_the_right_sha256_load(registered, original):
    assert same_weights(maskclip.load("micro-test"), original[0]) == 0


def test_registered_sha256_that_differs_from_the_file_is_refused(registered):
    registered[1]["sha256"] = "0" * 64
    with pytest.raises(WeightsError, match="sha256 mismatch.*registered"):
        maskclip.load("micro-test")


@budget(30)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), registered_sha=st.booleans())
def test_a_bit_flip_in_a_cached_download_is_caught_by_sha256(original, tmp_path_factory, where, bit, registered_sha):
    # The cache names the blob by its sha256; trusting the name without hashing missed every flip.
    with pytest.MonkeyPatch.context() as mp:
        snapshot = write_hub_cache(offline_hub(mp, tmp_path_factory.mktemp("hub")), "org/micro", original[1], move=False)
        blob = (snapshot / "model.safetensors").resolve()
        entry = {"repo": "org/micro", "layout": "maskclip", "config_file": "config.json",
                 "weights_file": "model.safetensors", "sha256": blob.name if registered_sha else None}
        mp.setattr(hub, "registry", lambda: {"micro-test": entry})
        data = bytearray(blob.read_bytes())
        data[int(len(data) * where)] ^= 1 << bit
        blob.write_bytes(bytes(data))
        _, err = outcome("load(registered name, bit-flipped cache blob)", maskclip.load, "micro-test")
        assert isinstance(err, WeightsError) and "sha256 mismatch" in str(err)
        _, err = outcome("load(hf-hub:, bit-flipped cache blob)", maskclip.load, "hf-hub:org/micro")
        assert isinstance(err, WeightsError) and "sha256 mismatch" in str(err)
