"""SentencePiece model files (`spiece.model`), read from the protobuf wire format without protobuf.

Only what tokenizing needs is kept: the pieces with their scores and types, the model type, the
special-token ids and texts, byte fallback, and the normalizer (precompiled charsmap, dummy prefix,
whitespace handling). Field numbers are those of sentencepiece's `sentencepiece_model.proto`.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .errors import ConfigError

UNIGRAM, BPE = 1, 2  # TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # SentencePiece.Type


def _varint(data: bytes, pos: int) -> tuple:
    """(value, next position) of the base-128 varint at `pos`."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("a varint runs past the end of the data")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint is longer than 10 bytes")


def _fields(data: bytes) -> list:
    """The (field number, value) pairs of one message: an int for varints, bytes for everything else."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type in (1, 2, 5):
            if wire_type == 2:
                size, pos = _varint(data, pos)
            else:
                size = 8 if wire_type == 1 else 4
            if pos + size > len(data):
                raise ValueError(f"field {number} runs past the end of the data")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"field {number} has wire type {wire_type}, which sentencepiece models never use")
        fields.append((number, value))
    return fields


def _as_int(value, number: int) -> int:
    """A varint field as a signed 64-bit int (int32 fields store negatives in ten bytes)."""
    if not isinstance(value, int):
        raise ValueError(f"field {number} should be a number")
    return value - (1 << 64) if value >= 1 << 63 else value


def _as_text(value, number: int) -> str:
    if not isinstance(value, bytes):
        raise ValueError(f"field {number} should be text")
    return value.decode("utf-8")


class SentencePieceModel:
    """The parts of a ModelProto that tokenizing needs; defaults are the proto's."""

    def __init__(self, data: bytes):
        self.pieces = []  # [(piece, score, type)], in id order
        self.model_type, self.byte_fallback = UNIGRAM, False
        self.unk_id, self.bos_id, self.eos_id, self.pad_id = 0, 1, 2, -1
        self.unk_piece, self.bos_piece, self.eos_piece, self.pad_piece = "<unk>", "<s>", "</s>", "<pad>"
        self.charsmap, self.add_dummy_prefix, self.remove_extra_whitespaces = b"", True, True
        parts = {1: self._piece, 2: self._trainer_spec, 3: self._normalizer_spec}
        for number, value in _fields(data):
            if number in parts:
                if not isinstance(value, bytes):
                    raise ValueError(f"field {number} should be a message")
                parts[number](value)
        if not self.pieces:
            raise ValueError("it has no pieces")

    def _piece(self, data: bytes) -> None:
        piece, score, kind = None, 0.0, NORMAL
        for number, value in _fields(data):
            if number == 1:
                piece = _as_text(value, number)
            elif number == 2:
                if not isinstance(value, bytes) or len(value) != 4:
                    raise ValueError("a piece score should be a 32-bit float")
                score = struct.unpack("<f", value)[0]
            elif number == 3:
                kind = _as_int(value, number)
        if piece is None:
            raise ValueError(f"piece {len(self.pieces)} has no text")
        self.pieces.append((piece, score, kind))

    def _trainer_spec(self, data: bytes) -> None:
        numbers = {3: "model_type", 35: "byte_fallback", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
        texts = {45: "unk_piece", 46: "bos_piece", 47: "eos_piece", 48: "pad_piece"}
        for number, value in _fields(data):
            if number in numbers:
                setattr(self, numbers[number], _as_int(value, number))
            elif number in texts:
                setattr(self, texts[number], _as_text(value, number))
        self.byte_fallback = bool(self.byte_fallback)

    def _normalizer_spec(self, data: bytes) -> None:
        for number, value in _fields(data):
            if number == 2:
                if not isinstance(value, bytes):
                    raise ValueError("the precompiled charsmap should be bytes")
                self.charsmap = value
            elif number == 3:
                self.add_dummy_prefix = bool(_as_int(value, number))
            elif number == 4:
                self.remove_extra_whitespaces = bool(_as_int(value, number))


def read_sentencepiece_model(path) -> SentencePieceModel:
    """The Unigram SentencePiece model in `path`; ConfigError naming the file when it is not one."""
    path = Path(path)
    try:
        model = SentencePieceModel(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a readable SentencePiece model ({e}); expected the binary "
                          "ModelProto that sentencepiece saves (e.g. a T5/SigLIP spiece.model)") from e
    if model.model_type != UNIGRAM:
        kind = "BPE" if model.model_type == BPE else f"type-{model.model_type}"
        raise ConfigError(f"{path} is a {kind} SentencePiece model; maskclip reads only Unigram ones from "
                          "spiece.model (T5/SigLIP). For BPE vocabularies (Gemma, SigLIP2) put the repo's "
                          "tokenizer.json in the folder")
    if not 0 <= model.unk_id < len(model.pieces):
        raise ConfigError(f"{path}: unk_id {model.unk_id} is outside its {len(model.pieces)} pieces")
    return model
