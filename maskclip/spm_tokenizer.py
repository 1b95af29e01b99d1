"""SentencePiece tokenizers (SigLIP, SigLIP2 and other open_clip/transformers families) via `tokenizers`.

`SentencePieceTokenizer.from_folder(folder)` reads what such a repo ships and gives, text for text, the
ids of open_clip's `HFTokenizer` and of transformers' `AutoTokenizer` for the same folder:

- the vocabulary: `tokenizer.json` (preferred) or `spiece.model` (a Unigram SentencePiece model, read
  here without protobuf or sentencepiece);
- open_clip's `open_clip_config.json`: `text_cfg.context_length` and `text_cfg.tokenizer_kwargs`
  (`clean`: "canonicalize", "lower" or "whitespace", the default; `strip_sep_token`);
- transformers' `tokenizer_config.json` / `special_tokens_map.json`: the tokenizer class, the pad and
  eos tokens, `model_max_length`; special tokens around the text come from tokenizer.json's post-processor.

Per text: open_clip's clean-up (only when the folder has an open_clip config, as open_clip applies it
and transformers does not) -> the tokenizers pipeline -> the special tokens around the ids (SigLIP:
`ids + [</s>]`; SigLIP2: `ids + [<eos>]`) -> cut to the context length keeping those special tokens
(truncation=True) -> padded on the right with the pad id (SigLIP pads with `</s>`, SigLIP2 with `<pad>`).

Where transformers rebuilds a tokenizer class's pipeline instead of reading tokenizer.json verbatim,
this module does the same: T5/SigLIP Unigram models split on whitespace before the `▁` prefix
(sentencepiece's own whitespace handling), `SiglipTokenizer` canonicalizes (lowercase, no ASCII
punctuation, collapsed whitespace) inside the tokenizer, `Siglip2Tokenizer` lowercases.

Needs the optional `tokenizers` package: `pip install "maskclip[siglip]"`.
"""
from __future__ import annotations

import base64
import html
import json
import re
import string
from pathlib import Path
from typing import Optional

import ftfy
import numpy as np
import torch

from .atomic import atomic_write
from .errors import ConfigError, InputError, InputTypeError, ModelNotFoundError
from .spiece_model import CONTROL, UNKNOWN, SentencePieceModel, read_sentencepiece_model
from .tokenizer import MAX_CONTEXT_LENGTH, _FTFY_INERT_RE, _as_id_list, _as_text_list, _check_context_length

TOKENIZER_JSON = "tokenizer.json"
SPIECE_MODEL = "spiece.model"
OPEN_CLIP_CONFIG = "open_clip_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
MODEL_CONFIG = "config.json"

INSTALL_HINT = 'pip install "maskclip[siglip]"'
CLEAN_MODES = ("canonicalize", "lower", "whitespace")

# Classes whose transformers implementation rebuilds the Unigram pipeline and always appends eos.
_T5_LIKE_CLASSES = ("T5Tokenizer", "T5TokenizerFast", "SiglipTokenizer")


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(f"SentencePiece tokenizers (SigLIP, SigLIP2, ...) need the `tokenizers` package, "
                          f"which is not installed: {INSTALL_HINT}") from e
    return tokenizers


# ---- open_clip's clean-up, applied before tokenizing -------------------------------------------------------

def _basic_clean(text: str) -> str:
    """ftfy.fix_text and html.unescape twice, then strip; skipped for text both provably leave unchanged."""
    if _FTFY_INERT_RE.fullmatch(text) is None:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return text.strip()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _clean_whitespace(text: str) -> str:
    return " ".join(_basic_clean(text).split())


def _clean_lower(text: str) -> str:
    return _clean_whitespace(text).lower()


def _clean_canonicalize(text: str) -> str:
    """big_vision's prompt canonicalization: '_' -> ' ', ASCII punctuation removed, lowercase, collapsed whitespace."""
    return " ".join(_basic_clean(text).replace("_", " ").translate(_NO_PUNCTUATION).lower().split())


_CLEAN_FUNCTIONS = {"canonicalize": _clean_canonicalize, "lower": _clean_lower, "whitespace": _clean_whitespace}

_PY_WHITESPACE_RE = re.compile(r"\s+")


def _siglip_canonicalize(text: str, lower: bool) -> str:
    """transformers' SiglipTokenizer clean-up, run inside its tokenize: `▁` read as a space, lowercase
    (its do_lower_case), ASCII punctuation removed, runs of whitespace collapsed, stripped.

    Done in Python, not as a `tokenizers` normalizer: Python's lower() knows the final sigma (Σ -> ς
    at the end of a word), the Rust per-character one does not.
    """
    text = text.replace("▁", " ")
    if lower:
        text = text.lower()
    return _PY_WHITESPACE_RE.sub(" ", text.translate(_NO_PUNCTUATION)).strip()


def _unigram_pipeline(tk, charsmap: bytes, compose: bool, prefix: bool = True, split_whitespace: bool = True) -> dict:
    """Normalizer, pre-tokenizer and decoder of a SentencePiece Unigram model, as sentencepiece applies them.

    The charsmap (e.g. nmt_nfkc) first; then whitespace stripped and collapsed (whitespace split) and
    `▁` put before every word, as transformers' T5Tokenizer does. `compose` puts NFC before the charsmap,
    which makes `tokenizers`' Precompiled agree with sentencepiece itself (SiglipTokenizer) on decomposed
    text: alone it drops the second of two combining marks and leaves Hangul jamo uncomposed.
    """
    scheme = "always" if prefix else "never"
    metaspace = tk.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    normalizer = tk.normalizers.Precompiled(charsmap) if charsmap else None
    if normalizer is not None and compose:
        normalizer = tk.normalizers.Sequence([tk.normalizers.NFC(), normalizer])
    return {
        "normalizer": normalizer,
        "pre_tokenizer": (tk.pre_tokenizers.Sequence([tk.pre_tokenizers.WhitespaceSplit(), metaspace])
                          if split_whitespace else metaspace),
        "decoder": tk.decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True),
    }


def _tokenizer_from_spiece(tk, spm: SentencePieceModel, special_tokens: list, compose: bool):
    """A tokenizers.Tokenizer for a Unigram model, with `special_tokens` matched in text (see _unigram_pipeline)."""
    vocab = [(piece, score) for piece, score, _ in spm.pieces]
    tokenizer = tk.Tokenizer(tk.models.Unigram(vocab, spm.unk_id, spm.byte_fallback))
    pipeline = _unigram_pipeline(tk, spm.charsmap, compose, spm.add_dummy_prefix, spm.remove_extra_whitespaces)
    for name, part in pipeline.items():
        if part is not None:
            setattr(tokenizer, name, part)
    # Control pieces (<pad>, </s>, ...) and the unknown piece are special tokens, matched in the raw text,
    # as transformers' converters make them.
    piece_ids = {piece: i for i, (piece, _, _) in enumerate(spm.pieces)}
    specials = [piece for piece, _, kind in spm.pieces if kind in (CONTROL, UNKNOWN)]
    specials += [t for t in special_tokens if t in piece_ids and t not in specials]
    tokenizer.add_special_tokens([tk.AddedToken(t, normalized=False, special=True) for t in specials])
    return tokenizer


# ---- the folder's settings --------------------------------------------------------------------------------

def _read_json(path: Path, expected: str):
    """The parsed JSON object in `path`, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); expected {expected}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a JSON {type(value).__name__}; expected {expected}")
    return value


def _token_text(value) -> Optional[str]:
    """A special token as transformers stores it: a str or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _sane_length(value) -> Optional[int]:
    """A context length from a config, or None when absent or transformers' 'unset' huge number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_CONTEXT_LENGTH:
        return None
    return value


class _Settings:
    """What open_clip_config.json, tokenizer_config.json, special_tokens_map.json and config.json say."""

    def __init__(self, folder: Path, open_clip_text_cfg: Optional[dict] = None):
        self.open_clip = _read_json(folder / OPEN_CLIP_CONFIG, "open_clip's model config {\"model_cfg\": ...}")
        if self.open_clip is None and open_clip_text_cfg is not None:
            self.open_clip = {"model_cfg": {"text_cfg": dict(open_clip_text_cfg)}}
        self.config = _read_json(folder / TOKENIZER_CONFIG, "transformers' tokenizer settings")
        self.special_map = _read_json(folder / SPECIAL_TOKENS_MAP, "transformers' special tokens")
        self.model_config = _read_json(folder / MODEL_CONFIG, "a transformers model config")
        text_cfg = ((self.open_clip or {}).get("model_cfg") or {}).get("text_cfg") or {}
        self.text_cfg = text_cfg if isinstance(text_cfg, dict) else {}
        self.tokenizer_class = (self.config or {}).get("tokenizer_class")

    def token(self, name: str, default: Optional[str]) -> Optional[str]:
        """A special token (`pad_token`, `eos_token`, ...): tokenizer_config, then special_tokens_map, then default."""
        for source in (self.config, self.special_map):
            if source and name in source:
                return _token_text(source[name])
        return default

    def clean(self) -> Optional[str]:
        """open_clip's clean mode (None without an open_clip config: transformers cleans nothing)."""
        if self.open_clip is None:
            return None
        kwargs = self.text_cfg.get("tokenizer_kwargs") or {}
        mode = self.text_cfg.get("tokenizer_mode")
        if mode:  # open_clip's "clips" mode re-arranges the special tokens
            raise ConfigError(f"{OPEN_CLIP_CONFIG}: text_cfg.tokenizer_mode {mode!r} is not supported; "
                              "maskclip tokenizes as open_clip's standard HFTokenizer mode (no tokenizer_mode)")
        # open_clip's HFTokenizer defaults to "whitespace"; SigLipTokenizer (no hf_tokenizer_name) canonicalizes.
        default = "whitespace" if self.text_cfg.get("hf_tokenizer_name") else "canonicalize"
        clean = kwargs.get("clean", default)
        if clean not in CLEAN_MODES:
            raise ConfigError(f"{OPEN_CLIP_CONFIG}: text_cfg.tokenizer_kwargs.clean must be one of "
                              f"{list(CLEAN_MODES)}, got {clean!r}")
        return clean

    def runs_sentencepiece(self, spm_only: bool) -> bool:
        """Whether transformers would build a SiglipTokenizer, which runs sentencepiece itself (not `tokenizers`):
        its class named, or a bare spiece.model with no class."""
        return self.tokenizer_class == "SiglipTokenizer" or (spm_only and self.tokenizer_class is None)

    def siglip_canonicalize(self, spm_only: bool) -> Optional[str]:
        """'lower'/'cased' (its do_lower_case) when SiglipTokenizer's own clean-up applies, else None."""
        if not self.runs_sentencepiece(spm_only):
            return None
        return "lower" if (self.config or {}).get("do_lower_case", True) else "cased"

    def strip_sep_token(self) -> bool:
        return bool((self.text_cfg.get("tokenizer_kwargs") or {}).get("strip_sep_token", False))

    def context_length(self) -> Optional[int]:
        """open_clip's text_cfg.context_length, else model_max_length, else the text tower's positions."""
        text_config = (self.model_config or {}).get("text_config") or {}
        for value in (self.text_cfg.get("context_length"), (self.config or {}).get("model_max_length"),
                      text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None):
            length = _sane_length(value)
            if length is not None:
                return length
        return None


# ---- the tokenizer ----------------------------------------------------------------------------------------

def _template_ids(post_processor: Optional[dict], path: Path) -> tuple:
    """(ids before, ids after) the text from a tokenizer.json post-processor (TemplateProcessing or none)."""
    if post_processor is None:
        return (), ()
    if post_processor.get("type") != "TemplateProcessing":
        raise ConfigError(f"{path}: post_processor {post_processor.get('type')!r} is not supported; "
                          "expected TemplateProcessing (or none), as SentencePiece repos ship")
    specials = post_processor.get("special_tokens") or {}
    before, after, seen_text = [], [], False
    for item in post_processor.get("single") or []:
        if "Sequence" in item:
            seen_text = True
        elif "SpecialToken" in item:
            name = item["SpecialToken"]["id"]
            if name not in specials:
                raise ConfigError(f"{path}: post_processor uses special token {name!r} without its id")
            (after if seen_text else before).extend(specials[name]["ids"])
    return tuple(before), tuple(after)


class SentencePieceTokenizer:
    """`tokenizer(texts) -> LongTensor [B, context_length]` for SentencePiece-tokenized CLIP families.

    Build it with `from_folder`. Each row is `before + ids + after` (the model's special tokens, e.g.
    SigLIP's trailing `</s>`), cut to the context length keeping `after`, then right-padded with
    `pad_id`. Safe to share between threads (`tokenizers` encodes without shared mutable state).
    """

    def __init__(self, tokenizer, *, context_length: int, pad_id: int, before=(), after=(),
                 clean: Optional[str] = None, siglip_canonicalize: Optional[str] = None,
                 strip_sep_id: Optional[int] = None, files: Optional[dict] = None):
        _check_context_length(context_length)
        if clean is not None and clean not in CLEAN_MODES:
            raise InputError(f"clean must be one of {list(CLEAN_MODES)} or None, got {clean!r}")
        if siglip_canonicalize not in (None, "lower", "cased"):
            raise InputError(f"siglip_canonicalize must be 'lower', 'cased' or None, got {siglip_canonicalize!r}")
        self._tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id = pad_id
        self.clean = clean
        self.siglip_canonicalize = siglip_canonicalize
        self._clean = _CLEAN_FUNCTIONS[clean] if clean else None
        self._canonicalize_lower = None if siglip_canonicalize is None else siglip_canonicalize == "lower"
        self._before, self._after = tuple(before), tuple(after)
        self._strip_sep_id = strip_sep_id
        self._files = dict(files or {})
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder, context_length: Optional[int] = None,
                    open_clip_text_cfg: Optional[dict] = None) -> "SentencePieceTokenizer":
        """Read the tokenizer files of an open_clip or transformers repo folder (see the module docstring).

        `context_length` overrides the folder's (open_clip's `text_cfg.context_length`, then
        `model_max_length`, then config.json's `text_config.max_position_embeddings`).
        `open_clip_text_cfg` (`hf_tokenizer_name`, `tokenizer_kwargs`, ...) stands in for the
        open_clip_config.json of a folder that has none, such as a native maskclip folder, whose
        config.json carries those fields: open_clip's clean-up then applies as for that config.
        """
        tk = _import_tokenizers()
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelNotFoundError(f"tokenizer folder {folder} does not exist or is not a directory")
        json_path, spm_path = folder / TOKENIZER_JSON, folder / SPIECE_MODEL
        if not json_path.is_file() and not spm_path.is_file():
            raise ModelNotFoundError(
                f"{folder} has no tokenizer files: expected {TOKENIZER_JSON} (a `tokenizers` Tokenizer, as "
                f"open_clip's SigLIP/SigLIP2 repos ship) or {SPIECE_MODEL} (a SentencePiece model, as "
                "transformers' SigLIP repos ship)")
        settings = _Settings(folder, open_clip_text_cfg)
        length = context_length if context_length is not None else settings.context_length()
        if length is None:
            raise ConfigError(f"{folder}: no context length; pass context_length= or ship {OPEN_CLIP_CONFIG} "
                              f"(text_cfg.context_length) or {TOKENIZER_CONFIG} (model_max_length)")
        if json_path.is_file():
            data = json_path.read_bytes()
            tokenizer, before, after, default_pad = _load_tokenizer_json(tk, json_path, data, settings)
            files = {TOKENIZER_JSON: data}
        else:
            tokenizer, before, after, default_pad = _load_spiece(tk, spm_path, settings)
            files = {SPIECE_MODEL: spm_path.read_bytes()}
        pad_token = settings.token("pad_token", default_pad)
        pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
        if pad_id is None:
            raise ConfigError(f"{folder}: the pad token {pad_token!r} (from {TOKENIZER_CONFIG} or "
                              f"{SPECIAL_TOKENS_MAP}, or the default) is not in the vocabulary")
        sep = settings.token("sep_token", None) if settings.strip_sep_token() else None
        for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
            if (folder / name).is_file():
                files[name] = (folder / name).read_bytes()
        return cls(tokenizer, context_length=length, pad_id=pad_id, before=before, after=after,
                   clean=settings.clean(),
                   siglip_canonicalize=settings.siglip_canonicalize(spm_only=TOKENIZER_JSON not in files),
                   strip_sep_id=tokenizer.token_to_id(sep) if sep else None, files=files)

    # ---- tokenizing ----

    def _prepare(self, texts: list) -> list:
        """Clean texts as open_clip, then SiglipTokenizer, would; refuse lone surrogates (tokenizers cannot)."""
        if self._clean is not None:
            texts = [self._clean(text) for text in texts]  # ftfy replaces lone surrogates
        else:
            for i, text in enumerate(texts):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise InputError(f"texts[{i}] is not valid Unicode ({e.reason} at index {e.start}); "
                                     "fix or drop unpaired surrogates first") from e
        if self._canonicalize_lower is not None:
            texts = [_siglip_canonicalize(text, self._canonicalize_lower) for text in texts]
        return texts

    def encode(self, text: str) -> list:
        """Ids of one text after clean-up, without the special tokens and without truncation."""
        if not isinstance(text, str):
            raise InputTypeError(f"encode() expects one str, got {type(text).__name__}")
        return self._tokenizer.encode(self._prepare([text])[0], add_special_tokens=False).ids

    def __call__(self, texts, context_length=None, truncate: bool = True) -> torch.Tensor:
        """Tokenize a str or a list/tuple of str into `LongTensor [B, context_length]`.

        A text whose ids and special tokens exceed `context_length` is cut (its trailing special
        tokens kept, as transformers' truncation=True does) when `truncate` is true, and raises
        `InputError` naming the text otherwise. `context_length` defaults to `self.context_length`.
        """
        texts = _as_text_list(texts)
        length = self.context_length if context_length is None else context_length
        _check_context_length(length)
        if not isinstance(truncate, bool):
            raise InputTypeError(f"truncate must be a bool, got {type(truncate).__name__}")
        width = length - len(self._before) - len(self._after)
        if width < 0:
            raise InputError(f"context_length {length} leaves no room for the {len(self._before) + len(self._after)} "
                             "special tokens this tokenizer adds")
        encodings = self._tokenizer.encode_batch(self._prepare(texts), add_special_tokens=False)
        rows = [e.ids for e in encodings]
        if not truncate:
            self._check_fits(texts, rows, width, length)
        return self._pack(rows, length, width)

    def _check_fits(self, texts: list, rows: list, width: int, length: int) -> None:
        for i, (text, ids) in enumerate(zip(texts, rows)):
            if len(ids) > width:
                preview = text if len(text) <= 40 else text[:40] + "..."
                raise InputError(
                    f"texts[{i}] ({preview!r}) is {len(ids) - width} token(s) too long: {len(ids)} tokens + "
                    f"{length - width} special > context_length {length}; shorten it or pass truncate=True")

    def _pack(self, rows: list, length: int, width: int) -> torch.Tensor:
        """Rows of ids -> `LongTensor [B, length]`: before, ids cut to `width`, after, pad ids."""
        out = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        nb, na = len(self._before), len(self._after)
        out[:, :nb] = self._before
        for row, ids in zip(out, rows):
            n = min(len(ids), width)
            row[nb:nb + n] = ids[:n]
            row[nb + n:nb + n + na] = self._after
        if self._strip_sep_id is not None:  # open_clip's strip_sep_token writes 0 over the separator
            out[out == self._strip_sep_id] = 0
        return torch.from_numpy(out)

    def decode(self, ids) -> str:
        """Text of a sequence of ids (list of int or 1-D tensor), special tokens and padding skipped."""
        return self._tokenizer.decode(_as_id_list(ids, self.vocab_size), skip_special_tokens=True)

    # ---- saving ----

    def save(self, folder) -> list:
        """Write the tokenizer files this tokenizer was read from into `folder`, each atomically.

        tokenizer.json / spiece.model and special_tokens_map.json are copied byte for byte;
        tokenizer_config.json gets `model_max_length` = `context_length`, so transformers and
        `from_folder` read the same length back. open_clip's clean-up lives in the model's
        open_clip_config.json (`text_cfg.tokenizer_kwargs`), which the model export writes.
        Returns the written paths.
        """
        folder = Path(folder)
        contents = dict(self._files)
        config = json.loads(contents[TOKENIZER_CONFIG]) if TOKENIZER_CONFIG in contents else {}
        config["model_max_length"] = self.context_length
        contents[TOKENIZER_CONFIG] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        paths = []
        for name, data in contents.items():
            path = folder / name
            atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))
            paths.append(path)
        return paths

    def __repr__(self) -> str:
        return (f"SentencePieceTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
                f"pad_id={self.pad_id}, clean={self.clean!r}, siglip_canonicalize={self.siglip_canonicalize!r})")


def _ids_of(tokenizer, tokens: list, path: Path) -> tuple:
    ids = []
    for token in tokens:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ConfigError(f"{path}: special token {token!r} is not in the vocabulary")
        ids.append(token_id)
    return tuple(ids)


def _load_tokenizer_json(tk, path: Path, data: bytes, settings: _Settings) -> tuple:
    """(tokenizers.Tokenizer, ids before, ids after, default pad token) from a tokenizer.json, shaped as
    transformers shapes it for the folder's tokenizer class."""
    try:
        text = data.decode("utf-8")
        spec = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); expected the tokenizer.json that `tokenizers` "
                          "saves (it may be truncated: download it again)") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise ConfigError(f"{path} has no \"model\" object; expected the tokenizer.json that `tokenizers` saves")
    try:
        tokenizer = tk.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for every malformed field
        raise ConfigError(f"{path} is not a tokenizer `tokenizers` can load ({e}); expected the "
                          "tokenizer.json of a SentencePiece repo (Unigram or BPE model)") from e
    tokenizer.no_truncation()  # truncation and padding are ours (a file may carry its own settings)
    tokenizer.no_padding()
    t5_like = settings.tokenizer_class in _T5_LIKE_CLASSES
    default_pad = "</s>" if settings.tokenizer_class == "SiglipTokenizer" else "<pad>"
    if t5_like and spec["model"].get("type") == "Unigram":
        pipeline = _unigram_pipeline(tk, _charsmap(spec.get("normalizer")), settings.runs_sentencepiece(False))
        tokenizer.normalizer, tokenizer.pre_tokenizer = pipeline["normalizer"], pipeline["pre_tokenizer"]
    if settings.tokenizer_class == "Siglip2Tokenizer":  # transformers' class lowercases before Gemma's normalizer
        rest = [tokenizer.normalizer] if tokenizer.normalizer is not None else []
        tokenizer.normalizer = tk.normalizers.Sequence([tk.normalizers.Lowercase(), *rest])
    if t5_like:  # transformers' T5Tokenizer and SiglipTokenizer always append eos, whatever the file says
        return tokenizer, (), _ids_of(tokenizer, [settings.token("eos_token", "</s>")], path), default_pad
    # The file's template, not tokenizer_config's add_bos_token/add_eos_token: transformers (>= 5) ignores
    # those when there is a tokenizer.json, and the SigLIP2 repos' two agree.
    before, after = _template_ids(spec.get("post_processor"), path)
    return tokenizer, before, after, default_pad


def _load_spiece(tk, path: Path, settings: _Settings) -> tuple:
    """(tokenizers.Tokenizer, ids before, ids after, default pad token) from a Unigram spiece.model.

    A folder with only spiece.model and no tokenizer class is the transformers SigLIP layout, read as
    SiglipTokenizer reads it: pad = eos = `</s>`, eos appended.
    """
    spm = read_sentencepiece_model(path)
    eos, unk = settings.token("eos_token", spm.eos_piece), settings.token("unk_token", spm.unk_piece)
    default_pad = "</s>" if settings.tokenizer_class in (None, "SiglipTokenizer") else spm.pad_piece
    pad = settings.token("pad_token", default_pad)
    tokenizer = _tokenizer_from_spiece(tk, spm, [t for t in (eos, unk, pad) if t],
                                       compose=settings.runs_sentencepiece(spm_only=True))
    return tokenizer, (), _ids_of(tokenizer, [eos], path), default_pad


def _charsmap(normalizer: Optional[dict]) -> bytes:
    """The Precompiled charsmap inside a tokenizer.json normalizer (alone or in a Sequence), or b""."""
    if not normalizer:
        return b""
    parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for part in parts:
        if part.get("type") == "Precompiled" and part.get("precompiled_charsmap"):
            return base64.b64decode(part["precompiled_charsmap"])
    return b""
