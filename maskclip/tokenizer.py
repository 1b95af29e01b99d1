"""The byte-pair-encoding tokenizer of OpenAI CLIP, id for id identical to open_clip's default one.

Pipeline per text: clean (ftfy.fix_text, html.unescape twice, collapse whitespace, lowercase) ->
split into pre-tokens with CLIP's regex -> BPE each pre-token over its UTF-8 bytes -> ids.
A batch becomes `[SOT] + ids + [EOT]` per row, zero padded to `[B, context_length]`.

It matches `open_clip.SimpleTokenizer(clean="lower")` exactly (the tests compare every id), and is
several times faster on typical captions (benchmarks/run.py): BPE results are cached per pre-token
in a dict that computes its misses (so a hit costs one C-level lookup), ftfy is skipped for texts it
provably leaves unchanged, and the output is written into one numpy buffer.
"""
import gzip
import html
import importlib.resources
import json
import os
import re
import threading
from itertools import chain

import ftfy
import numpy as np
import regex
import torch

from .errors import InputError, InputTypeError

DEFAULT_CONTEXT_LENGTH = 77
MAX_CONTEXT_LENGTH = 65536  # far beyond any CLIP text tower; larger requests are mistakes that would exhaust memory

SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"

_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # merge lines 1..48894 of the file; line 0 is a header

# open_clip's pattern, flags included: IGNORECASE matters even on lowercased text, because case
# folding lets "'ſ" (long s) match the contraction "'s".
_PRETOKEN_RE = regex.compile(
    rf"{SOT_TEXT}|{EOT_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
    regex.IGNORECASE,
)
# The same pattern restricted to ASCII input, where \p{L} is [a-zA-Z], \p{N} is [0-9] and the
# `regex` module's \s is [\t\n\v\f\r ] (not \x1c-\x1f, which str.isspace() also counts). The
# stdlib engine runs it faster.
_ASCII_PRETOKEN_RE = re.compile(
    rf"{SOT_TEXT}|{EOT_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[a-zA-Z]+|[0-9]|[^\t\n\x0b\x0c\r a-zA-Z0-9]+",
    re.IGNORECASE | re.ASCII,
)
# Texts made only of these characters (printable ASCII except '&', plus tab and newline) are left
# unchanged by ftfy.fix_text (its fixers act on '&' entities, ESC sequences, '\r', ASCII controls or
# non-ASCII characters) and by html.unescape (needs '&'). tests/test_tokenizer.py checks this claim
# against ftfy itself.
_FTFY_INERT_RE = re.compile(r"[\t\n\x20-\x25\x27-\x7e]*")


def _byte_symbols() -> dict:
    """CLIP's reversible map {byte value: printable unicode symbol}, in vocabulary order.

    Printable Latin-1 bytes map to themselves and come first; the others (controls, space, ...)
    follow, mapped to chr(256 + k), so that BPE never sees whitespace or control characters.
    The first 256 vocabulary ids follow this insertion order, not byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def _read_merges() -> list:
    """The 48894 merge pairs, in rank order, from the merges file shipped as `maskclip.bpe` data."""
    data = (importlib.resources.files("maskclip.bpe") / _MERGES_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1:_NUM_MERGES + 1]
    return [tuple(line.split()) for line in lines]


def clean_text(text: str) -> str:
    """open_clip's default ("lower") cleaning: fix mojibake, unescape HTML twice, collapse whitespace, lowercase."""
    if _FTFY_INERT_RE.fullmatch(text) is None:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    # str.split() and str.strip() share one definition of whitespace, so this also strips.
    return " ".join(text.split()).lower()


def _merge_lowest_pair(symbols: list, ranks: dict) -> list:
    """One BPE step: merge every left-to-right occurrence of the best-ranked adjacent pair.

    Returns `symbols` itself when no adjacent pair is a known merge.
    """
    pairs = list(zip(symbols, symbols[1:]))
    best = min(pairs, key=lambda pair: ranks.get(pair, _NUM_MERGES))
    if best not in ranks:
        return symbols
    first, second = best
    merged, i, n = [], 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class _WordCache(dict):
    """{pre-token: ids} that BPE-encodes its misses and empties itself when full.

    Lookups are plain dict lookups (C speed, atomic under the GIL, so threads can share it); only a
    miss runs Python. Emptying when full is cheap and keeps the values immutable tuples.
    """

    def __init__(self, encode, size: int):
        super().__init__()
        self._encode, self._size = encode, size

    def __missing__(self, word: str) -> tuple:
        ids = self._encode(word)
        if len(self) >= self._size:
            self.clear()
        self[word] = ids
        return ids


class Tokenizer:
    """CLIP's BPE tokenizer: `tokenizer(texts) -> LongTensor [B, context_length]`.

    Loads the merges once; safe to share between threads (the per-word cache is a plain dict whose
    single operations are atomic, and its values are immutable tuples).
    """

    sot_token_id = 49406
    eot_token_id = 49407
    vocab_size = 49408

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, cache_size: int = 200_000):
        _check_context_length(context_length)
        self.context_length = context_length
        self.cache_size = cache_size
        merges = _read_merges()
        byte_symbols = _byte_symbols()
        symbols = list(byte_symbols.values())
        vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), SOT_TEXT, EOT_TEXT]
        self._encoder = {token: i for i, token in enumerate(vocab)}
        self._vocab = vocab
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._special_ids = {SOT_TEXT: (self.sot_token_id,), EOT_TEXT: (self.eot_token_id,)}
        # latin-1 decoding turns byte b into chr(b); translating that through this table yields
        # the byte symbols, in one C call per word.
        self._byte_table = str.maketrans({chr(b): s for b, s in byte_symbols.items()})
        self._symbol_to_latin1 = str.maketrans({s: chr(b) for b, s in byte_symbols.items()})
        self._space_symbol = byte_symbols[ord(" ")]
        self._cache = _WordCache(self._bpe_ids, cache_size)

    def _bpe_ids(self, word: str) -> tuple:
        """Ids of one pre-token (uncached): special token, or BPE over its UTF-8 byte symbols."""
        special = self._special_ids.get(word)
        if special is not None:
            return special
        symbols = list(word.encode("utf-8").decode("latin-1").translate(self._byte_table))
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            merged = _merge_lowest_pair(symbols, self._ranks)
            if merged is symbols:
                break
            symbols = merged
        return tuple(self._encoder[s] for s in symbols)

    def encode(self, text: str) -> list:
        """BPE ids of one text, without SOT/EOT and without truncation."""
        if not isinstance(text, str):
            raise InputTypeError(f"encode() expects one str, got {type(text).__name__}")
        return self._encode(text)

    def _encode(self, text: str) -> list:
        """`encode` without the type check (callers have checked)."""
        text = clean_text(text)
        pattern = _ASCII_PRETOKEN_RE if text.isascii() else _PRETOKEN_RE
        return list(chain.from_iterable(map(self._cache.__getitem__, pattern.findall(text))))

    def __call__(self, texts, context_length=None, truncate: bool = True) -> torch.Tensor:
        """Tokenize a str or a list/tuple of str into `LongTensor [B, context_length]`.

        Each row is `[SOT] + ids + [EOT]` padded with 0. A text longer than `context_length - 2`
        BPE tokens is cut and ends with EOT when `truncate` is true (open_clip's behaviour), and
        raises `InputError` naming the text otherwise (OpenAI CLIP's). `context_length` defaults to
        `self.context_length`.
        """
        texts = _as_text_list(texts)
        length = self.context_length if context_length is None else context_length
        _check_context_length(length)
        if not isinstance(truncate, bool):
            raise InputTypeError(f"truncate must be a bool, got {type(truncate).__name__}")
        rows = [self._encode(text) for text in texts]
        if not truncate:
            _check_fits(texts, rows, length)
        return self._pack(rows, length)

    def _pack(self, rows: list, length: int) -> torch.Tensor:
        """Rows of BPE ids -> `LongTensor [B, length]`: SOT, ids cut to `length - 2`, EOT, zeros.

        Written row by row into one zeroed numpy buffer, which torch then shares: per-row tensors,
        or padding Python lists, cost several times more on short captions.
        """
        width = length - 2
        out = np.zeros((len(rows), length), dtype=np.int64)
        out[:, 0] = self.sot_token_id
        for row, ids in zip(out, rows):
            n = min(len(ids), width)
            row[1:n + 1] = ids[:n]
            row[n + 1] = self.eot_token_id
        return torch.from_numpy(out)

    def decode(self, ids) -> str:
        """Text of a sequence of ids (list of int or 1-D tensor), words separated by single spaces.

        SOT is skipped and decoding stops at the first EOT, so a full row of `__call__` output
        decodes without its padding (padding id 0 is also the token "!", only EOT tells them apart).
        Invalid UTF-8 from partial byte tokens becomes U+FFFD.
        """
        ids = _as_id_list(ids, self.vocab_size)
        if self.eot_token_id in ids:
            ids = ids[:ids.index(self.eot_token_id)]
        symbols = "".join(self._vocab[i] for i in ids if i != self.sot_token_id)
        # "</w>" ends a word: turn it into the symbol of the space byte, then map symbols back to bytes.
        data = symbols.replace("</w>", self._space_symbol).translate(self._symbol_to_latin1).encode("latin-1")
        return data.decode("utf-8", errors="replace").strip()

    def save_transformers_files(self, directory) -> list:
        """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json for transformers.

        `transformers.CLIPTokenizer.from_pretrained(directory)` then reproduces our ids on text that
        ftfy and html.unescape leave unchanged (transformers does neither). Special tokens use the
        OpenAI/transformers spelling `<|startoftext|>`/`<|endoftext|>`; transformers pads with
        `<|endoftext|>` (49407) where we pad with 0. Returns the written paths.
        """
        os.makedirs(directory, exist_ok=True)
        hf_names = {SOT_TEXT: "<|startoftext|>", EOT_TEXT: "<|endoftext|>"}
        vocab = {hf_names.get(token, token): i for i, token in enumerate(self._vocab)}
        merges = ["#version: 0.2", *(" ".join(pair) for pair in sorted(self._ranks, key=self._ranks.get))]
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.context_length,
                  "do_lower_case": True, "errors": "replace", **special}
        contents = {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": "\n".join(merges) + "\n",
                    "tokenizer_config.json": json.dumps(config, indent=2),
                    "special_tokens_map.json": json.dumps(special, indent=2)}
        paths = []
        for name, text in contents.items():
            path = os.path.join(directory, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            paths.append(path)
        return paths


def _check_context_length(context_length) -> None:
    """context_length must be an int in [2, MAX_CONTEXT_LENGTH] (room for SOT and EOT)."""
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise InputTypeError(f"context_length must be an int >= 2, got {type(context_length).__name__}")
    if context_length < 2:
        raise InputError(f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length}")
    if context_length > MAX_CONTEXT_LENGTH:  # the output is [B, context_length] int64, mostly padding
        raise InputError(f"context_length must be at most {MAX_CONTEXT_LENGTH}, got {context_length}; "
                         "to count the tokens of a long text use encode()")


def _as_text_list(texts) -> list:
    """A str or a non-empty list/tuple of str -> list of str; anything else raises."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        hint = " (decode bytes to str first)" if isinstance(texts, (bytes, bytearray)) else ""
        raise InputTypeError(f"texts must be a str or a list/tuple of str, got {type(texts).__name__}{hint}")
    if not texts:
        raise InputError("texts must be a str or a non-empty list/tuple of str, got an empty "
                         f"{type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputTypeError(f"texts must be a str or a list/tuple of str, but texts[{i}] is "
                                 f"{type(text).__name__}")
    return list(texts)


def _check_fits(texts: list, rows: list, context_length: int) -> None:
    """Raise InputError naming the first text whose ids do not fit between SOT and EOT."""
    for i, (text, ids) in enumerate(zip(texts, rows)):
        overflow = len(ids) + 2 - context_length
        if overflow > 0:
            preview = text if len(text) <= 40 else text[:40] + "..."
            raise InputError(
                f"texts[{i}] ({preview!r}) is {overflow} token(s) too long: {len(ids)} BPE tokens + SOT + EOT "
                f"> context_length {context_length}; shorten it or pass truncate=True")


def _as_id_list(ids, vocab_size: int) -> list:
    """A 1-D tensor or a sequence of ints -> list of int, each in [0, vocab_size)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise InputError(f"decode() expects a 1-D tensor of ids (one row), got shape {list(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise InputTypeError(f"decode() expects a sequence of int ids or a 1-D tensor, got {type(ids).__name__}")
    ids = list(ids)
    for i, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputTypeError(f"decode() expects int ids, but ids[{i}] is {type(value).__name__}")
        if not 0 <= value < vocab_size:
            raise InputError(f"decode() expects ids in [0, {vocab_size}), but ids[{i}] is {value}")
    return ids


_default_tokenizer = None
_default_lock = threading.Lock()


def get_tokenizer() -> Tokenizer:
    """The shared default Tokenizer (context length 77), built on first use."""
    global _default_tokenizer
    if _default_tokenizer is None:
        with _default_lock:
            if _default_tokenizer is None:
                _default_tokenizer = Tokenizer()
    return _default_tokenizer


def tokenize(texts, context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = True) -> torch.Tensor:
    """Tokenize with the shared default tokenizer: `LongTensor [B, context_length]` (see `Tokenizer.__call__`)."""
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
