"""Small tokenizer folders in the shapes SigLIP and SigLIP2 repos ship, trained here with `tokenizers`.

A Unigram vocabulary (T5/SigLIP: `tokenizer.json` with a Metaspace pre-tokenizer and a `$A </s>`
template, or a hand-written `spiece.model`) and a Gemma-style byte-fallback BPE (SigLIP2), with the
open_clip_config.json / tokenizer_config.json / special_tokens_map.json those repos carry. Used by
tests/test_spm_tokenizer.py and benchmarks/spm_tokenizer.py.
"""
import json
import struct

import tokenizers as tk

HUGE = 1000000000000000019884624838656  # transformers' "no limit" model_max_length, as saved in real repos
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def open_clip_config(hf_name: str, vocab_size: int, **tokenizer_kwargs) -> dict:
    text_cfg = {"context_length": 64, "vocab_size": vocab_size, "hf_tokenizer_name": hf_name,
                "tokenizer_kwargs": {"clean": "canonicalize", **tokenizer_kwargs}, "width": 768, "heads": 12,
                "layers": 12, "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}
    return {"model_cfg": {"embed_dim": 768, "init_logit_bias": -10, "custom_text": True, "text_cfg": text_cfg},
            "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}


T5_CONFIG = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "additional_special_tokens": [], "legacy": False,
             "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "model_max_length": HUGE}
T5_SPECIAL_MAP = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
SIGLIP_CONFIG = {"tokenizer_class": "SiglipTokenizer", "do_lower_case": True, "eos_token": "</s>",
                 "pad_token": "</s>", "unk_token": "<unk>", "model_max_length": 64}
GEMMA_CONFIG = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True,
                "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                "padding_side": "right", "model_max_length": HUGE}
GEMMA_SPECIAL_MAP = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}


def write(folder, files: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return folder


# ---- vocabularies -------------------------------------------------------------------------------------

def t5_shaped_json(pieces: list, unk_id: int, charsmap: bytes = b"") -> str:
    """tokenizer.json as transformers 4 converted T5/SigLIP spiece.model files (timm/ViT-B-16-SigLIP's shape)."""
    tokenizer = tk.Tokenizer(tk.models.Unigram(pieces, unk_id, False))
    steps = [tk.normalizers.Precompiled(charsmap)] if charsmap else []
    tokenizer.normalizer = tk.normalizers.Sequence(steps + [tk.normalizers.Replace(tk.Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = tk.decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens([tk.AddedToken(t, normalized=False, special=True) for t in T5_SPECIALS])
    return tokenizer.to_str()


def trained_unigram_pieces(texts: list, vocab_size: int = 700) -> list:
    """[(piece, score)] of a Unigram model trained with `tokenizers`, T5's special tokens at ids 0, 1, 2."""
    tokenizer = tk.Tokenizer(tk.models.Unigram())
    tokenizer.normalizer = tk.normalizers.NFKC()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = tk.trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=T5_SPECIALS, unk_token="<unk>",
                                         show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return [tuple(p) for p in json.loads(tokenizer.to_str())["model"]["vocab"]]


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 fields take ten bytes, as protobuf writes them
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _proto_field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire_type)
    return key + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def _proto_int(number: int, value: int) -> bytes:
    return _proto_field(number, 0, _varint(value))


def spiece_bytes(pieces: list, unk_id: int = 2, eos_id: int = 1, pad_id: int = 0, model_type: int = 1) -> bytes:
    """A sentencepiece ModelProto written by hand: pieces (CONTROL/UNKNOWN types for the specials), trainer spec."""
    out = b""
    for i, (piece, score) in enumerate(pieces):
        kind = 2 if i == unk_id else 3 if i in (eos_id, pad_id) else 1
        body = (_proto_field(1, 2, piece.encode("utf-8")) + _proto_field(2, 5, struct.pack("<f", score))
                + _proto_int(3, kind))
        out += _proto_field(1, 2, body)
    trainer = _proto_int(3, model_type) + _proto_int(40, unk_id) + _proto_int(41, -1) + _proto_int(42, eos_id) \
        + _proto_int(43, pad_id)
    return out + _proto_field(2, 2, trainer) + _proto_field(3, 2, _proto_field(1, 2, b"identity"))


def gemma_shaped_json(texts: list, vocab_size: int = 1000) -> str:
    """tokenizer.json in Gemma's shape (SigLIP2): byte-fallback BPE, spaces as ▁, no pre-tokenizer, `$A <eos>`."""
    trainer_tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tokenizer.normalizer = tk.normalizers.Replace(" ", "▁")
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=GEMMA_SPECIALS, show_progress=False)
    trainer_tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    learned = [p for p in sorted(model["vocab"], key=model["vocab"].get) if p not in GEMMA_SPECIALS]
    # Gemma's order: special tokens, then the 256 byte tokens, then the learned pieces.
    vocab = {p: i for i, p in enumerate(GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + learned)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = tk.normalizers.Replace(" ", "▁")
    tokenizer.decoder = tk.decoders.Sequence([tk.decoders.Replace("▁", " "), tk.decoders.ByteFallback(),
                                              tk.decoders.Fuse()])
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single="$A:0 <eos>:0", pair="$A:0 <eos>:0 $B:1 <eos>:1", special_tokens=[("<eos>", 1)])
    tokenizer.add_special_tokens([tk.AddedToken(t, normalized=False, special=True) for t in GEMMA_SPECIALS])
    return tokenizer.to_str()


def build_repos(root, unigram_pieces: list, gemma_json: str) -> dict:
    """{name: folder}: SigLIP-like (Unigram) and SigLIP2-like (Gemma BPE) repos, open_clip and transformers layouts."""
    t5_json = t5_shaped_json(unigram_pieces, 2)
    vocab = len(unigram_pieces)
    return {
        "siglip_open_clip": write(root / "siglip_open_clip", {
            "tokenizer.json": t5_json, "open_clip_config.json": open_clip_config("timm/ViT-B-16-SigLIP", vocab),
            "tokenizer_config.json": T5_CONFIG, "special_tokens_map.json": T5_SPECIAL_MAP}),
        "t5_transformers": write(root / "t5_transformers", {
            "tokenizer.json": t5_json, "tokenizer_config.json": dict(T5_CONFIG, model_max_length=64)}),
        "t5_spiece": write(root / "t5_spiece", {
            "spiece.model": spiece_bytes(unigram_pieces),
            "tokenizer_config.json": dict(T5_CONFIG, model_max_length=64)}),
        "siglip2_open_clip": write(root / "siglip2_open_clip", {
            "tokenizer.json": gemma_json, "open_clip_config.json": open_clip_config("timm/ViT-B-16-SigLIP2", 256000),
            "tokenizer_config.json": GEMMA_CONFIG, "special_tokens_map.json": GEMMA_SPECIAL_MAP}),
        "siglip2_transformers": write(root / "siglip2_transformers", {
            "tokenizer.json": gemma_json, "tokenizer_config.json": dict(GEMMA_CONFIG, model_max_length=64)}),
        "siglip2_transformers_lowercase": write(root / "siglip2_transformers_lowercase", {
            "tokenizer.json": gemma_json,
            "tokenizer_config.json": dict(GEMMA_CONFIG, model_max_length=64, tokenizer_class="Siglip2Tokenizer")}),
    }
