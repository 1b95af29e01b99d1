"""The tokenizer is id-for-id open_clip's default CLIP tokenizer, plus strict input checking.

The reference is `open_clip.get_tokenizer("ViT-B-16")` (a plain `SimpleTokenizer` with the default
"lower" cleaning), built offline. The corpus is tests/tokenizer_corpus.py.
"""
import concurrent.futures
import html
import socket

import ftfy
import open_clip
import pytest
import torch
from hypothesis import given, settings, strategies as st

from maskclip.errors import InputError, InputTypeError
from maskclip.tokenizer import _FTFY_INERT_RE, Tokenizer, clean_text, get_tokenizer, tokenize
from tokenizer_corpus import corpus

CORPUS = corpus()
SOT, EOT = 49406, 49407
# Every character the ftfy fast path may skip: printable ASCII except '&', plus tab and newline.
INERT_CHARS = ["\t", "\n", *(chr(c) for c in range(0x20, 0x7F) if chr(c) != "&")]


@pytest.fixture(scope="module")
def ours():
    return get_tokenizer()


@pytest.fixture(scope="module")
def reference():
    """open_clip's tokenizer for ViT-B-16, built with the Hub switched off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(scope="module")
def reference_ids(reference):
    return reference(CORPUS)


def test_reference_is_open_clip_plain_simple_tokenizer_built_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("open_clip.get_tokenizer tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    assert type(tokenizer) is open_clip.tokenizer.SimpleTokenizer
    assert tokenizer.clean_fn is open_clip.tokenizer._clean_lower
    assert tokenizer.reduction_fn is None
    assert tokenizer.context_length == 77


def test_corpus_is_deterministic_and_covers_empty_and_very_long_texts(reference):
    assert corpus() == CORPUS and len(CORPUS) == 2000
    assert corpus(1000, seed=1) == corpus(1000, seed=1) != corpus(1000, seed=2)
    assert "" in CORPUS
    lengths = [len(reference.encode(text)) for text in CORPUS]
    assert sum(n > 75 for n in lengths) >= 20
    assert sum(n > 1000 for n in lengths) >= 5


# ---- parity with open_clip --------------------------------------------------------------------

def test_batched_ids_equal_open_clip_on_corpus(ours, reference_ids):
    ids = ours(CORPUS)
    assert ids.dtype == torch.long and ids.shape == (len(CORPUS), 77)
    assert torch.equal(ids, reference_ids)


def test_one_text_at_a_time_ids_equal_open_clip_on_corpus(ours, reference_ids):
    for i, text in enumerate(CORPUS):
        assert torch.equal(ours(text), reference_ids[i:i + 1]), repr(text)


def test_encode_equals_open_clip_encode_without_truncation_on_corpus(ours, reference):
    for text in CORPUS:
        assert ours.encode(text) == reference.encode(text), repr(text)


def test_cleaning_equals_open_clip_lower_cleaning_on_corpus():
    for text in CORPUS:
        assert clean_text(text) == open_clip.tokenizer._clean_lower(text), repr(text)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(text=st.text(max_size=120))
def test_ids_equal_open_clip_on_arbitrary_unicode(ours, reference, text):
    assert ours.encode(text) == reference.encode(text)
    assert torch.equal(ours(text), reference(text))


@pytest.mark.parametrize("text", [
    "ΣΊΣΥΦΟΣ ΟΔΟΣ",  # str.lower() turns a word-final capital sigma into ς, not σ
    "'ſ",  # the IGNORECASE pattern folds long s: "'ſ" is the contraction 's
    "a <end_of_text> b <START_OF_TEXT>",  # open_clip's special-token names are special in text too
    "<|endoftext|>",  # OpenAI's spelling is not special for open_clip
    "&amp;amp; &lt;b&gt; &#39;",  # unescaped twice after ftfy
    "<b>x</b> &amp;amp;",  # '<' stops ftfy from unescaping, html.unescape still runs twice
    "cafÃ© doesnâ€™t",  # mojibake fixed by ftfy
    "İstanbul",  # lowercases to two code points
    "a\u00a0b\u200bc\r\nd\u3000e",  # NBSP and ideographic space are whitespace, ZWSP is not
])
def test_known_pitfalls_match_open_clip(ours, reference, text):
    assert ours.encode(text) == reference.encode(text)


# ---- the ftfy fast path -------------------------------------------------------------------------

def test_ftfy_and_unescape_leave_fast_path_corpus_texts_unchanged():
    inert = [text for text in CORPUS if _FTFY_INERT_RE.fullmatch(text)]
    assert len(inert) > 500
    for text in inert:
        assert ftfy.fix_text(text) == text and html.unescape(text) == text, repr(text)


def test_every_fast_path_character_survives_ftfy_alone_repeated_and_between_letters():
    for char in INERT_CHARS:
        for text in [char, char * 3, f"a{char}b", f"<{char}>"]:
            assert _FTFY_INERT_RE.fullmatch(text)
            assert ftfy.fix_text(text) == text, repr(text)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(INERT_CHARS), max_size=200))
def test_ftfy_leaves_printable_ascii_without_ampersand_unchanged(text):
    assert _FTFY_INERT_RE.fullmatch(text)
    assert ftfy.fix_text(text) == text
    assert html.unescape(text) == text


# ---- layout, truncation, context length ---------------------------------------------------------

def test_empty_and_whitespace_only_texts_give_sot_eot_then_zeros(ours):
    expected = torch.zeros(3, 77, dtype=torch.long)
    expected[:, 0], expected[:, 1] = SOT, EOT
    assert torch.equal(ours(["", "   ", "\t\n\u00a0"]), expected)


def test_truncate_true_puts_eot_in_last_slot_and_equals_open_clip(ours, reference):
    long_texts = [text for text in CORPUS if len(reference.encode(text)) > 75]
    ids = ours(long_texts)
    assert (ids[:, -1] == EOT).all() and (ids[:, 0] == SOT).all()
    assert torch.equal(ids, reference(long_texts))


def test_truncate_false_raises_naming_the_text_index_and_overflow(ours):
    with pytest.raises(InputError, match=r"texts\[1\] \('a a a a .*\.\.\.'\) is 5 token\(s\) too long"):
        ours(["a cat", "a " * 80, "a " * 90], truncate=False)


def test_text_of_exactly_75_tokens_fits_with_truncate_false_and_76_does_not(ours):
    ids = ours("a " * 75, truncate=False)
    assert ids[0, 0] == SOT and ids[0, -1] == EOT and (ids[0, 1:-1] == 320).all()
    with pytest.raises(InputError, match=r"is 1 token\(s\) too long"):
        ours("a " * 76, truncate=False)


@pytest.mark.parametrize("context_length", [2, 3, 16, 100, 248])
def test_context_lengths_other_than_77_equal_open_clip(ours, reference, context_length):
    texts = CORPUS[:300]
    ids = ours(texts, context_length=context_length)
    assert ids.shape == (300, context_length)
    assert torch.equal(ids, reference(texts, context_length=context_length))


def test_instance_context_length_is_the_call_default():
    assert Tokenizer(context_length=16)(["a", "b"]).shape == (2, 16)


def test_module_tokenize_uses_the_shared_default_tokenizer(ours):
    assert get_tokenizer() is ours and isinstance(ours, Tokenizer)
    assert torch.equal(tokenize(CORPUS[:50]), ours(CORPUS[:50]))
    assert tokenize("a", context_length=5).tolist() == [[SOT, 320, EOT, 0, 0]]


def test_special_ids_and_vocab_size_match_open_clip(ours, reference):
    assert (ours.sot_token_id, ours.eot_token_id, ours.vocab_size) == (49406, 49407, 49408)
    assert (reference.sot_token_id, reference.eot_token_id, reference.vocab_size) == (49406, 49407, 49408)
    assert ours.context_length == 77


# ---- decode ---------------------------------------------------------------------------------------

@settings(max_examples=200, derandomize=True, deadline=None)
@given(words=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12), min_size=1, max_size=10))
def test_decode_round_trips_plain_lowercase_ascii(ours, words):
    text = " ".join(words)
    assert ours.decode(ours.encode(text)) == text


def test_decode_of_a_padded_row_skips_sot_and_stops_at_eot(ours):
    row = ours("a photo of a dog!")[0]
    assert ours.decode(row) == "a photo of a dog !"


def test_decode_matches_open_clip_on_non_ascii(ours, reference):
    ids = ours.encode("naïve café 👍🏽 東京")
    assert ours.decode(ids) == reference.decode(ids).strip()


@pytest.mark.parametrize("ids, error", [
    ([0, 49408], InputError),
    ([-1], InputError),
    (torch.zeros(2, 3, dtype=torch.long), InputError),
    ("a photo", InputTypeError),
    ([1.0], InputTypeError),
    (7, InputTypeError),
])
def test_decode_rejects_bad_ids(ours, ids, error):
    with pytest.raises(error, match="decode"):
        ours.decode(ids)


# ---- bad inputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("texts, error, given_part", [
    (None, InputTypeError, "got NoneType"),
    (5, InputTypeError, "got int"),
    (b"a photo", InputTypeError, "got bytes .decode bytes to str first"),
    ({"a photo"}, InputTypeError, "got set"),
    (["a photo", 3], InputTypeError, r"texts\[1\] is int"),
    (("a", None), InputTypeError, r"texts\[1\] is NoneType"),
    ([], InputError, "got an empty list"),
    ((), InputError, "got an empty tuple"),
])
def test_bad_texts_raise_saying_expected_and_given(ours, texts, error, given_part):
    with pytest.raises(error, match=f"a str or a (non-empty )?list/tuple of str.*{given_part}"):
        ours(texts)


@pytest.mark.parametrize("context_length, error", [
    (1, InputError), (0, InputError), (-77, InputError),
    (77.0, InputTypeError), ("77", InputTypeError), (True, InputTypeError),
])
def test_bad_context_length_raises(ours, context_length, error):
    with pytest.raises(error, match=r"context_length must be an int >= 2"):
        ours("a photo", context_length=context_length)


def test_non_bool_truncate_raises(ours):
    with pytest.raises(InputTypeError, match="truncate must be a bool, got str"):
        ours("a photo", truncate="no")


def test_encode_of_non_str_raises(ours):
    with pytest.raises(InputTypeError, match="encode.. expects one str, got list"):
        ours.encode(["a photo"])


def test_input_errors_are_catchable_as_builtin_value_and_type_errors(ours):
    with pytest.raises(TypeError):
        ours(None)
    with pytest.raises(ValueError):
        ours([])


# ---- cache and threads -------------------------------------------------------------------------------

def test_tokenizing_the_same_texts_twice_gives_the_same_ids(reference_ids):
    tokenizer = Tokenizer()
    first = tokenizer(CORPUS)
    assert torch.equal(first, tokenizer(CORPUS))
    assert torch.equal(first, reference_ids)


def test_ids_unchanged_after_the_word_cache_fills_and_is_emptied(reference_ids):
    tokenizer = Tokenizer(cache_size=8)
    assert torch.equal(tokenizer(CORPUS[:400]), reference_ids[:400])
    assert 0 < len(tokenizer._cache) <= 8
    assert torch.equal(tokenizer(CORPUS[:400]), reference_ids[:400])


def test_concurrent_calls_from_threads_give_identical_ids(reference_ids):
    tokenizer = Tokenizer(cache_size=64)  # small, so threads empty it under each other's feet
    chunks = [list(range(start, len(CORPUS), 8)) for start in range(8)]

    def run(indices):
        return indices, tokenizer([CORPUS[i] for i in indices])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for indices, ids in pool.map(run, chunks * 2):
            assert torch.equal(ids, reference_ids[indices])


# ---- transformers interop ------------------------------------------------------------------------------

def transformers_agrees(text: str) -> bool:
    """Texts on which transformers' CLIP tokenizer is documented (by its code) to behave like ours.

    transformers 5 tokenizes CLIP with the Rust `tokenizers` pipeline (NFC, \\s+ -> " ", lowercase,
    the same split regex), so it differs from OpenAI/open_clip where:
    - ftfy.fix_text or html.unescape would change the text (transformers runs neither);
    - a capital sigma is lowercased: str.lower() writes a word-final ς, `tokenizers` always σ;
    - "'ſ": open_clip's pattern is case-insensitive, so case folding makes it the contraction 's;
    - special-token spellings: transformers treats <|startoftext|>/<|endoftext|> in text as special
      tokens, open_clip treats <start_of_text>/<end_of_text> (its own names) as special.
    """
    specials = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")
    return (ftfy.fix_text(text) == text and html.unescape(text) == text and "Σ" not in text
            and "'ſ" not in text and not any(s in text.lower() for s in specials))


@pytest.fixture(scope="module")
def transformers_dir(ours, tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip_tokenizer")
    ours.save_transformers_files(directory)
    return directory


def test_save_transformers_files_writes_the_four_files(transformers_dir):
    names = sorted(p.name for p in transformers_dir.iterdir())
    assert names == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]


@pytest.mark.parametrize("class_name", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_transformers_tokenizer_from_saved_files_gives_our_ids(ours, transformers_dir, monkeypatch, class_name):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_tokenizer = getattr(transformers, class_name).from_pretrained(transformers_dir)
    texts = [text for text in CORPUS if transformers_agrees(text)]
    assert len(texts) > 1000
    for text, hf_ids in zip(texts, hf_tokenizer(texts)["input_ids"]):
        assert hf_ids == [SOT, *ours.encode(text), EOT], repr(text)
    # transformers pads with EOT where we pad with 0; the first EOT (the pooled position) agrees.
    padded = hf_tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt")
    ours_row = ours("a photo of a cat")
    assert torch.equal(padded["input_ids"][:, :7], ours_row[:, :7])
    assert (padded["input_ids"][:, 7:] == EOT).all() and (ours_row[:, 7:] == 0).all()
