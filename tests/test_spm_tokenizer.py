"""SentencePieceTokenizer gives open_clip's and transformers' ids for SigLIP/SigLIP2-shaped tokenizer folders.

The folders (tests/spm_files.py) are built here in the shapes the real repos ship, with vocabularies
trained on a few hundred corpus texts by `tokenizers`, and by `sentencepiece` where installed (its
nmt_nfkc charsmap; transformers' SiglipTokenizer runs sentencepiece itself). The texts compared are
tests/tokenizer_corpus.py's: ASCII, accents (also decomposed), CJK, emoji, HTML entities, mojibake,
odd whitespace, empty and very long texts.
"""
import json
import sys
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer_corpus import FIXED, corpus

tk = pytest.importorskip("tokenizers")

from maskclip.errors import ConfigError, InputError, InputTypeError, ModelNotFoundError  # noqa: E402
from maskclip.spm_tokenizer import SentencePieceTokenizer  # noqa: E402

import spm_files as sf  # noqa: E402

TEXTS = corpus(700, 0)
TRAINING_TEXTS = [t.encode("utf-8", "replace").decode() for t in corpus(500, 1)[len(FIXED):]]
# Special-token texts: without open_clip's clean-up they are special tokens in the text, as in transformers.
SPECIAL_TEXTS = ["a </s> b", "<pad>x", "x<unk>", " <pad> ", "<eos><bos>", "<mask> a", "▁▁a▁ b"]


@pytest.fixture(scope="module")
def unigram_pieces():
    return sf.trained_unigram_pieces(TRAINING_TEXTS)


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """(spiece.model bytes, [(piece, score)], charsmap) trained by sentencepiece with nmt_nfkc normalization."""
    spm = pytest.importorskip("sentencepiece")
    from sentencepiece import sentencepiece_model_pb2

    folder = tmp_path_factory.mktemp("spm")
    (folder / "train.txt").write_text("\n".join(t.replace("\n", " ") for t in TRAINING_TEXTS if t.strip()),
                                      encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(folder / "train.txt"), model_prefix=str(folder / "t5"), vocab_size=800, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    data = (folder / "t5.model").read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    return data, [(p.piece, p.score) for p in proto.pieces], proto.normalizer_spec.precompiled_charsmap


@pytest.fixture(scope="module")
def folders(tmp_path_factory, unigram_pieces):
    """Repo folders, by name, that need only `tokenizers` to build."""
    return sf.build_repos(tmp_path_factory.mktemp("repos"), unigram_pieces, sf.gemma_shaped_json(TRAINING_TEXTS))


@pytest.fixture(scope="module")
def spm_folders(tmp_path_factory, sentencepiece_model):
    """Repo folders whose Unigram vocabulary and nmt_nfkc charsmap come from a real sentencepiece model."""
    data, pieces, charsmap = sentencepiece_model
    root = tmp_path_factory.mktemp("spm_repos")
    t5_json = sf.t5_shaped_json(pieces, 2, charsmap)
    return {
        "siglip_open_clip": sf.write(root / "siglip_open_clip", {
            "tokenizer.json": t5_json, "spiece.model": data,
            "open_clip_config.json": sf.open_clip_config("timm/ViT-B-16-SigLIP", len(pieces)),
            "tokenizer_config.json": sf.T5_CONFIG, "special_tokens_map.json": sf.T5_SPECIAL_MAP}),
        "t5_transformers": sf.write(root / "t5_transformers", {
            "tokenizer.json": t5_json, "tokenizer_config.json": dict(sf.T5_CONFIG, model_max_length=64)}),
        "siglip_transformers": sf.write(root / "siglip_transformers", {
            "spiece.model": data, "tokenizer_config.json": sf.SIGLIP_CONFIG,
            "special_tokens_map.json": sf.T5_SPECIAL_MAP}),
    }


def _open_clip_reference(folder, context_length=None):
    from open_clip.tokenizer import HFTokenizer

    text_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    return HFTokenizer(str(folder), context_length=context_length or text_cfg["context_length"],
                       **text_cfg["tokenizer_kwargs"])


def _transformers_reference(folder, context_length: int):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return lambda texts: tokenizer(texts, padding="max_length", max_length=context_length, truncation=True,
                                   return_tensors="pt").input_ids


def _valid_unicode(texts: list) -> list:
    """Texts without lone surrogates (transformers cannot take them; open_clip's ftfy repairs them)."""
    return [t for t in texts if t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == t]


def _assert_rows_equal(ours, reference, texts):
    mismatched = [(i, t) for i, (t, a, b) in enumerate(zip(texts, ours, reference)) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} texts differ, first: {mismatched[:3]}"
    assert ours.shape == reference.shape and ours.dtype == torch.long


# ---- ids equal open_clip's and transformers' ------------------------------------------------------------

@pytest.mark.parametrize("name", ["siglip_open_clip", "siglip2_open_clip"])
def test_open_clip_layout_ids_equal_open_clip_hf_tokenizer_on_corpus(folders, name):
    ours = SentencePieceTokenizer.from_folder(folders[name])
    assert ours.context_length == 64 and ours.clean == "canonicalize"
    _assert_rows_equal(ours(TEXTS), _open_clip_reference(folders[name])(TEXTS), TEXTS)


@pytest.mark.parametrize("name", ["t5_transformers", "siglip2_transformers", "siglip2_transformers_lowercase"])
def test_transformers_layout_ids_equal_auto_tokenizer_on_corpus(folders, name):
    ours = SentencePieceTokenizer.from_folder(folders[name])
    assert ours.context_length == 64 and ours.clean is None
    texts = _valid_unicode(TEXTS) + SPECIAL_TEXTS
    _assert_rows_equal(ours(texts), _transformers_reference(folders[name], 64)(texts), texts)


def test_siglip2_lowercases_only_for_siglip2_tokenizer_class(folders):
    gemma = SentencePieceTokenizer.from_folder(folders["siglip2_transformers"])
    siglip2 = SentencePieceTokenizer.from_folder(folders["siglip2_transformers_lowercase"])
    assert siglip2.encode("A Photo OF a Dog") == siglip2.encode("a photo of a dog") == gemma.encode("a photo of a dog")
    assert gemma.encode("A Photo OF a Dog") != gemma.encode("a photo of a dog")


def test_spiece_model_gives_the_ids_of_the_same_vocabulary_as_tokenizer_json(folders):
    from_spiece = SentencePieceTokenizer.from_folder(folders["t5_spiece"])
    from_json = SentencePieceTokenizer.from_folder(folders["t5_transformers"])
    texts = _valid_unicode(TEXTS) + SPECIAL_TEXTS
    _assert_rows_equal(from_spiece(texts), from_json(texts), texts)
    assert from_spiece.vocab_size == from_json.vocab_size and from_spiece.pad_id == from_json.pad_id == 1


@pytest.mark.parametrize("name", ["siglip_open_clip", "t5_transformers"])
def test_sentencepiece_trained_vocabulary_with_nfkc_charsmap_equals_references(spm_folders, name):
    folder = spm_folders[name]
    ours = SentencePieceTokenizer.from_folder(folder)
    if name == "siglip_open_clip":
        reference, texts = _open_clip_reference(folder), TEXTS
    else:
        reference, texts = _transformers_reference(folder, 64), _valid_unicode(TEXTS)
    _assert_rows_equal(ours(texts), reference(texts), texts)


def test_spiece_model_alone_equals_transformers_siglip_tokenizer_running_sentencepiece(spm_folders,
                                                                                     sentencepiece_model):
    """Equal ids, except where two segmentations score the same (e.g. "0"+"00" and "00"+"0"): which one
    sentencepiece picks depends on float rounding in its lattice (it changes with SiglipTokenizer's
    "<unk>" prefix trick), so those rows must be the same pieces' text with the same total score."""
    from transformers import AutoTokenizer

    folder = spm_folders["siglip_transformers"]
    ours = SentencePieceTokenizer.from_folder(folder)
    assert ours.siglip_canonicalize == "lower" and ours.pad_id == 1 and ours.context_length == 64
    theirs = AutoTokenizer.from_pretrained(str(folder))
    texts = _valid_unicode(TEXTS)
    reference = theirs(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt").input_ids
    pieces = sentencepiece_model[1]
    ties = 0
    for text, row, expected in zip(texts, ours(texts), reference):
        if torch.equal(row, expected):
            continue
        a, b = ours.encode(text), theirs(text, add_special_tokens=False).input_ids
        assert "".join(pieces[i][0] for i in a) == "".join(pieces[i][0] for i in b), text
        assert sum(pieces[i][1] for i in a) == pytest.approx(sum(pieces[i][1] for i in b), abs=1e-4), text
        ties += 1
    assert ties <= len(texts) // 50


def test_siglip_tokenizer_layout_canonicalizes_special_token_texts_away_as_big_vision(unigram_pieces, tmp_path):
    """SiglipTokenizer would keep a literal "</s>" as eos; SigLIP was trained on sentencepiece alone, which
    never matches special tokens in text, and canonicalization then drops their punctuation."""
    folder = sf.write(tmp_path / "siglip", {"spiece.model": sf.spiece_bytes(unigram_pieces),
                                            "tokenizer_config.json": sf.SIGLIP_CONFIG})
    ours = SentencePieceTokenizer.from_folder(folder)
    assert ours.siglip_canonicalize == "lower"
    assert ours.encode("A </s> B, <unk>!") == ours.encode("a s b unk")


def test_spiece_reader_matches_sentencepiece_own_parser(sentencepiece_model):
    from maskclip.spiece_model import SentencePieceModel

    data, pieces, charsmap = sentencepiece_model
    model = SentencePieceModel(data)
    assert [(p, s) for p, s, _ in model.pieces] == pieces
    assert (model.unk_id, model.eos_id, model.pad_id, model.bos_id) == (2, 1, 0, -1)
    assert model.charsmap == charsmap and model.add_dummy_prefix and model.remove_extra_whitespaces


# ---- open_clip's options: clean modes, strip_sep_token, context lengths, truncation -----------------------

@pytest.mark.parametrize("clean", ["canonicalize", "lower", "whitespace"])
def test_each_open_clip_clean_mode_equals_open_clip(folders, tmp_path, clean):
    folder = sf.write(tmp_path / clean, {
        "tokenizer.json": (folders["siglip2_open_clip"] / "tokenizer.json").read_text(encoding="utf-8"),
        "tokenizer_config.json": sf.GEMMA_CONFIG,
        "open_clip_config.json": sf.open_clip_config("timm/ViT-B-16-SigLIP2", 256000, clean=clean)})
    ours = SentencePieceTokenizer.from_folder(folder)
    assert ours.clean == clean
    _assert_rows_equal(ours(TEXTS), _open_clip_reference(folder)(TEXTS), TEXTS)


def test_strip_sep_token_zeroes_the_separator_as_open_clip_does(folders, tmp_path):
    folder = sf.write(tmp_path / "sep", {
        "tokenizer.json": (folders["siglip2_open_clip"] / "tokenizer.json").read_text(encoding="utf-8"),
        "tokenizer_config.json": dict(sf.GEMMA_CONFIG, sep_token="<eos>"),
        "open_clip_config.json": sf.open_clip_config("x", 256000, strip_sep_token=True)})
    ours = SentencePieceTokenizer.from_folder(folder)
    ids = ours(TEXTS[:200])
    assert not (ids == 1).any()
    _assert_rows_equal(ids, _open_clip_reference(folder)(TEXTS[:200]), TEXTS[:200])


@pytest.mark.parametrize("name", ["siglip_open_clip", "siglip2_open_clip"])
@pytest.mark.parametrize("context_length", [2, 5, 16, 77])
def test_other_context_lengths_truncate_keeping_eos_as_open_clip(folders, name, context_length):
    ours = SentencePieceTokenizer.from_folder(folders[name], context_length=context_length)
    reference = _open_clip_reference(folders[name], context_length)
    _assert_rows_equal(ours(TEXTS[:300]), reference(TEXTS[:300]), TEXTS[:300])
    assert ours.context_length == context_length


def test_call_context_length_overrides_the_instance_one(folders):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    assert ours("a photo", context_length=9).shape == (1, 9)
    assert torch.equal(ours("a photo", context_length=9)[0], SentencePieceTokenizer.from_folder(
        folders["siglip2_open_clip"], context_length=9)("a photo")[0])


def test_rows_are_ids_then_eos_then_padding(folders):
    siglip = SentencePieceTokenizer.from_folder(folders["siglip_open_clip"])
    ids = siglip.encode("a photo of a dog")
    row = siglip("A photo of a dog!")[0].tolist()
    assert row == ids + [1] + [siglip.pad_id] * (64 - len(ids) - 1) and siglip.pad_id == 1  # SigLIP pads with </s>
    siglip2 = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    ids = siglip2.encode("a photo of a dog")
    assert siglip2("a photo of a dog")[0].tolist() == ids + [1] + [0] * (64 - len(ids) - 1)  # <eos>, then <pad>


def test_rows_are_padded_on_the_right_even_where_transformers_would_pad_left(folders, tmp_path):
    """GemmaTokenizer pads on the left unless tokenizer_config says "right"; SigLIP2 was trained right-padded."""
    config = {k: v for k, v in sf.GEMMA_CONFIG.items() if k != "padding_side"}
    folder = sf.write(tmp_path / "left", {
        "tokenizer.json": (folders["siglip2_open_clip"] / "tokenizer.json").read_bytes(),
        "tokenizer_config.json": dict(config, model_max_length=64)})
    ours = SentencePieceTokenizer.from_folder(folder)
    ids = ours.encode("a photo of a dog")
    assert ours("a photo of a dog")[0].tolist() == ids + [1] + [0] * (63 - len(ids))


def test_empty_and_whitespace_only_texts_give_eos_then_padding(folders):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    for text in ["", " ", "\t\n \u3000"]:
        assert ours(text)[0].tolist() == [1] + [0] * 63


def test_truncate_false_raises_naming_the_text_and_an_exact_fit_passes(folders):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"], context_length=8)
    fits = next(t for t in ["a b c d e f g", "a b c d e f", "a b c d e", "a b c"] if len(ours.encode(t)) == 7)
    assert ours([fits], truncate=False)[0, -1].item() == 1
    with pytest.raises(InputError, match=r"texts\[1\] \('hello world hello.*too long.*truncate=True"):
        ours(["ok", "hello world " * 20], truncate=False)


def test_batched_ids_equal_one_text_at_a_time(folders):
    ours = SentencePieceTokenizer.from_folder(folders["siglip_open_clip"])
    batched = ours(TEXTS[:150])
    assert all(torch.equal(batched[i], ours(t)[0]) for i, t in enumerate(TEXTS[:150]))


def test_concurrent_calls_from_threads_give_identical_ids(folders):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    expected, results = ours(TEXTS[:200]), []

    def work():
        results.append(ours(TEXTS[:200]))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(torch.equal(r, expected) for r in results)


# ---- encode, decode, attributes -----------------------------------------------------------------------

def test_encode_is_the_ids_without_special_tokens_or_truncation(folders):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    long_text = "hello world " * 100
    ids = ours.encode(long_text)
    assert len(ids) > 64 and 1 not in ids and ours(long_text)[0, :63].tolist() == ids[:63]


@pytest.mark.parametrize("name", ["siglip_open_clip", "siglip2_open_clip"])
def test_decode_round_trips_a_padded_row_of_canonical_text(folders, name):
    ours = SentencePieceTokenizer.from_folder(folders[name])
    for text in ["a photo of a dog", "two people riding bikes down a rainy street in paris"]:
        assert ours.decode(ours(text)[0]) == text


def test_decode_rejects_bad_ids(folders):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    with pytest.raises(InputError, match=r"ids in \[0, "):
        ours.decode([5, ours.vocab_size])
    with pytest.raises(InputTypeError, match="int ids"):
        ours.decode([1.5])


def test_pad_id_and_vocab_size_equal_transformers(folders):
    from transformers import AutoTokenizer

    for name in ["t5_transformers", "siglip2_transformers"]:
        ours = SentencePieceTokenizer.from_folder(folders[name])
        theirs = AutoTokenizer.from_pretrained(str(folders[name]))
        assert (ours.pad_id, ours.vocab_size) == (theirs.pad_token_id, len(theirs))


# ---- saving -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["siglip_open_clip", "t5_spiece", "siglip2_transformers"])
def test_save_writes_the_files_back_and_reloads_to_the_same_ids(folders, tmp_path, name):
    source = folders[name]
    ours = SentencePieceTokenizer.from_folder(source, context_length=32)
    paths = ours.save(tmp_path / "out")
    written = sorted(p.name for p in paths)
    assert written == sorted(p.name for p in source.iterdir()
                             if p.name in ("tokenizer.json", "spiece.model", "special_tokens_map.json")
                             or p.name == "tokenizer_config.json")
    for vocabulary in ("tokenizer.json", "spiece.model"):
        if (source / vocabulary).is_file():
            assert (tmp_path / "out" / vocabulary).read_bytes() == (source / vocabulary).read_bytes()
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["model_max_length"] == 32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == written  # no temporary files left
    if (source / "open_clip_config.json").is_file():  # the model export writes this one, with its clean-up
        config = json.loads((source / "open_clip_config.json").read_text())
        config["model_cfg"]["text_cfg"]["context_length"] = 32
        sf.write(tmp_path / "out", {"open_clip_config.json": config})
    reloaded = SentencePieceTokenizer.from_folder(tmp_path / "out")
    texts = _valid_unicode(TEXTS)
    assert reloaded.context_length == 32 and torch.equal(reloaded(texts), ours(texts))


# ---- settings resolution ------------------------------------------------------------------------------

def test_context_length_comes_from_argument_then_open_clip_then_model_max_length_then_config_json(folders, tmp_path):
    tokenizer_json = (folders["siglip2_open_clip"] / "tokenizer.json").read_text(encoding="utf-8")
    folder = sf.write(tmp_path / "f", {"tokenizer.json": tokenizer_json,
                                     "tokenizer_config.json": dict(sf.GEMMA_CONFIG, model_max_length=48),
                                     "config.json": {"text_config": {"max_position_embeddings": 40}}})
    assert SentencePieceTokenizer.from_folder(folder).context_length == 48
    assert SentencePieceTokenizer.from_folder(folder, context_length=20).context_length == 20
    sf.write(folder, {"open_clip_config.json": sf.open_clip_config("x", 256000)})
    assert SentencePieceTokenizer.from_folder(folder).context_length == 64
    (folder / "open_clip_config.json").unlink()
    sf.write(folder, {"tokenizer_config.json": sf.GEMMA_CONFIG})  # model_max_length "unlimited": not a length
    assert SentencePieceTokenizer.from_folder(folder).context_length == 40
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="no context length; pass context_length="):
        SentencePieceTokenizer.from_folder(folder)


def test_without_tokenizer_config_the_pad_token_defaults_to_pad(folders, tmp_path):
    tokenizer_json = (folders["siglip2_open_clip"] / "tokenizer.json").read_text(encoding="utf-8")
    folder = sf.write(tmp_path / "f", {"tokenizer.json": tokenizer_json})
    ours = SentencePieceTokenizer.from_folder(folder, context_length=64)
    assert ours.pad_id == 0
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(folder), pad_token="<pad>")  # transformers has no default
    reference = theirs(TEXTS[:200], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    _assert_rows_equal(ours(TEXTS[:200]), reference.input_ids, TEXTS[:200])


def test_bos_in_the_tokenizer_json_template_comes_first_as_in_transformers(folders, tmp_path):
    spec = json.loads((folders["siglip2_open_clip"] / "tokenizer.json").read_text(encoding="utf-8"))
    template = tk.processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    spec["post_processor"] = json.loads(template.__getstate__())
    folder = sf.write(tmp_path / "f", {"tokenizer.json": spec,
                                       "tokenizer_config.json": dict(sf.GEMMA_CONFIG, model_max_length=64)})
    ours = SentencePieceTokenizer.from_folder(folder)
    assert ours("a dog")[0, 0].item() == 2 and ours("a " * 100)[0, -1].item() == 1
    texts = _valid_unicode(TEXTS[:300])
    _assert_rows_equal(ours(texts), _transformers_reference(folder, 64)(texts), texts)


# ---- errors -------------------------------------------------------------------------------------------

def test_folder_without_tokenizer_files_is_refused_naming_the_expected_files(tmp_path):
    sf.write(tmp_path / "empty", {"config.json": {"model_type": "siglip"}})
    expected = r"has no tokenizer files: expected tokenizer\.json .* or spiece\.model"
    with pytest.raises(ModelNotFoundError, match=expected):
        SentencePieceTokenizer.from_folder(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        SentencePieceTokenizer.from_folder(tmp_path / "missing")


def test_truncated_tokenizer_json_is_refused_naming_the_file(folders, tmp_path):
    data = (folders["siglip2_open_clip"] / "tokenizer.json").read_bytes()
    sf.write(tmp_path / "cut", {"tokenizer.json": data[:len(data) // 2], "tokenizer_config.json": sf.GEMMA_CONFIG})
    with pytest.raises(ConfigError, match=r"cut/tokenizer\.json is not valid JSON .*truncated"):
        SentencePieceTokenizer.from_folder(tmp_path / "cut", context_length=64)


@pytest.mark.parametrize("content, message", [
    ({"version": "1.0"}, r"has no \"model\" object"),
    ({"model": {"type": "Nonsense"}}, "is not a tokenizer `tokenizers` can load"),
    ([1, 2], "holds a JSON list|has no \"model\""),
])
def test_malformed_tokenizer_json_is_refused_saying_what_was_expected(tmp_path, content, message):
    sf.write(tmp_path / "bad", {"tokenizer.json": json.dumps(content)})
    with pytest.raises(ConfigError, match=message):
        SentencePieceTokenizer.from_folder(tmp_path / "bad", context_length=64)


@pytest.mark.parametrize("cut", [1, 7, 100, -3])
def test_unreadable_spiece_model_is_refused_naming_the_file(unigram_pieces, tmp_path, cut):
    data = sf.spiece_bytes(unigram_pieces)
    sf.write(tmp_path / "s", {"spiece.model": data[:cut] if cut > 0 else data[:cut] + b"\xff\xff"})
    with pytest.raises(ConfigError, match=r"s/spiece\.model is not a readable SentencePiece model"):
        SentencePieceTokenizer.from_folder(tmp_path / "s", context_length=64)


def test_random_bytes_as_spiece_model_are_refused(tmp_path):
    sf.write(tmp_path / "s", {"spiece.model": bytes(range(256)) * 4})
    with pytest.raises(ConfigError, match="spiece.model is not a readable SentencePiece model"):
        SentencePieceTokenizer.from_folder(tmp_path / "s", context_length=64)


def test_bpe_spiece_model_is_refused_pointing_at_tokenizer_json(unigram_pieces, tmp_path):
    sf.write(tmp_path / "s", {"spiece.model": sf.spiece_bytes(unigram_pieces, model_type=2)})
    with pytest.raises(ConfigError, match=r"is a BPE SentencePiece model.*tokenizer\.json"):
        SentencePieceTokenizer.from_folder(tmp_path / "s", context_length=64)


def test_missing_tokenizers_package_names_the_extra_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r'need the `tokenizers` package.*pip install "maskclip\[siglip\]"'):
        SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])


def test_unknown_clean_mode_and_missing_pad_token_are_refused(folders, tmp_path):
    tokenizer_json = (folders["siglip2_open_clip"] / "tokenizer.json").read_text(encoding="utf-8")
    sf.write(tmp_path / "c", {"tokenizer.json": tokenizer_json, "tokenizer_config.json": sf.GEMMA_CONFIG,
                            "open_clip_config.json": sf.open_clip_config("x", 256000, clean="shout")})
    expected = r"clean must be one of \['canonicalize', 'lower', 'whitespace'\], got 'shout'"
    with pytest.raises(ConfigError, match=expected):
        SentencePieceTokenizer.from_folder(tmp_path / "c")
    sf.write(tmp_path / "p", {"tokenizer.json": tokenizer_json,
                            "tokenizer_config.json": dict(sf.GEMMA_CONFIG, pad_token="<nope>")})
    with pytest.raises(ConfigError, match="pad token '<nope>'"):
        SentencePieceTokenizer.from_folder(tmp_path / "p", context_length=64)


def test_open_clip_tokenizer_mode_is_refused(folders, tmp_path):
    config = sf.open_clip_config("x", 256000)
    config["model_cfg"]["text_cfg"]["tokenizer_mode"] = "clips"
    sf.write(tmp_path / "m", {"tokenizer.json": (folders["siglip2_open_clip"] / "tokenizer.json").read_bytes(),
                              "tokenizer_config.json": sf.GEMMA_CONFIG, "open_clip_config.json": config})
    with pytest.raises(ConfigError, match="tokenizer_mode 'clips' is not supported"):
        SentencePieceTokenizer.from_folder(tmp_path / "m")


def test_corrupt_json_settings_file_is_refused_naming_it(folders, tmp_path):
    tokenizer_json = (folders["siglip2_open_clip"] / "tokenizer.json").read_text(encoding="utf-8")
    sf.write(tmp_path / "c", {"tokenizer.json": tokenizer_json, "tokenizer_config.json": "{not json"})
    with pytest.raises(ConfigError, match=r"tokenizer_config\.json is not valid JSON"):
        SentencePieceTokenizer.from_folder(tmp_path / "c", context_length=64)


# ---- input checks, as maskclip.Tokenizer ----------------------------------------------------------------

@pytest.mark.parametrize("texts, error, given", [
    (b"abc", InputTypeError, "bytes"), (123, InputTypeError, "int"), ([], InputError, "empty list"),
    (["ok", None], InputTypeError, r"texts\[1\] is NoneType"),
])
def test_bad_texts_raise_saying_expected_and_given(folders, texts, error, given):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    with pytest.raises(error, match=given):
        ours(texts)


@pytest.mark.parametrize("context_length, error", [(1, InputError), (1.5, InputTypeError), (True, InputTypeError),
                                                   (10 ** 9, InputError)])
def test_bad_context_length_and_truncate_raise(folders, context_length, error):
    ours = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    with pytest.raises(error):
        ours("a", context_length=context_length)
    with pytest.raises(InputTypeError, match="truncate must be a bool"):
        ours("a", truncate=1)
    with pytest.raises(InputTypeError, match="encode\\(\\) expects one str"):
        ours.encode(["a"])


def test_lone_surrogate_is_refused_without_clean_and_repaired_with_it(folders):
    with pytest.raises(InputError, match=r"texts\[1\] is not valid Unicode"):
        SentencePieceTokenizer.from_folder(folders["siglip2_transformers"])(["ok", "bad \ud83d"])
    cleaned = SentencePieceTokenizer.from_folder(folders["siglip2_open_clip"])
    assert torch.equal(cleaned("bad \ud83d"), cleaned("bad \ufffd"))


@pytest.fixture(scope="module")
def open_clip_pairs(folders):
    """(ours, open_clip's HFTokenizer) for the SigLIP and SigLIP2 open_clip-layout folders."""
    return [(SentencePieceTokenizer.from_folder(folders[name]), _open_clip_reference(folders[name]))
            for name in ("siglip_open_clip", "siglip2_open_clip")]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(text=st.text(max_size=80))
def test_ids_equal_open_clip_on_arbitrary_unicode(open_clip_pairs, text):
    for ours, reference in open_clip_pairs:
        assert torch.equal(ours(text), reference(text))


@pytest.mark.parametrize("text", [
    "ΣΊΣΥΦΟΣ ΟΔΟΣ",  # final sigma
    "a </s> b <pad> <unk> <eos>",  # special-token texts: canonicalize strips their punctuation first
    "cafe\u0301 nai\u0308ve \u1100\u1161",  # decomposed accents and Hangul jamo (ftfy composes them)
    "¯\\_(ツ)_/¯ ¨b",  # NFKC turns ¯ and ¨ into a space plus a combining mark
    "x" * 500,  # one very long word
])
def test_known_pitfalls_match_open_clip(open_clip_pairs, text):
    for ours, reference in open_clip_pairs:
        assert torch.equal(ours(text), reference(text))
