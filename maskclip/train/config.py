"""The training config: one dataclass tree, presets as data, dotted overrides, a JSON round trip.

Every setting of every recipe is a field here with a default. Fields whose value is our own
choice (the MaskCLIP paper does not publish it) say so in their comment; ``docs/training.md``
("What the papers fix, and what is ours") explains each. Presets (``presets.json``) fill the
fields for a setting: ``vitb16-yfcc15m`` is the papers' ViT-B/16 YFCC-15M setting, ``tiny`` a
CPU-sized model for tests and examples.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import resources
from ..atomic import atomic_write_text
from ..errors import ConfigError

RECIPES = ("clip", "slip", "clip_mae", "maskclip", "rils")
PRECISIONS = ("fp32", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")
LOSSES = ("clip", "siglip")  # the image-text term of every recipe: softmax (InfoNCE) or sigmoid
ACCUM_MODES = ("cached", "micro")


@dataclass
class ContrastiveConfig:
    """Symmetric InfoNCE over the global batch (all recipes, with ``loss="clip"``; the sigmoid loss
    always exchanges features with gradient and scores local rows only)."""

    gather_with_grad: bool = True  # exact global-batch gradients (open_clip); False is SLIP's cheaper choice
    local_loss: bool = True  # local rows x global columns: memory linear in the global batch


@dataclass
class MaskingConfig:
    """Which patches the student does not see (MaskCLIP, CLIP+MAE, RILS)."""

    ratio: float = 0.75  # 75%: one secondary source for MaskCLIP; MAE's and RILS's value
    strategy: str = "random"  # "random" (per sample, exact count) | "block" (BEiT block-wise); ours: random
    mode: str = "drop"  # "drop": encoder sees visible tokens only (MAE, cheaper) | "token": BEiT mask tokens; ours: drop


@dataclass
class DecoderConfig:
    """The small decoder that predicts masked positions from the student's visible tokens."""

    layers: int = 2  # ours (MaskCLIP); RILS: 1; MAE uses 8 at width 512
    width: int = 0  # 0: the encoder's width (ours)
    heads: int = 0  # 0: width // 64 (at least 1)
    pos_embed: str = "learned"  # "learned" | "sincos" (RILS, MAE)
    # True: the decoder reads the encoder's output after its final LayerNorm (ln_post), as MAE and
    # RILS do; False: before it (ours for MaskCLIP)
    norm_input: bool = True


@dataclass
class SLIPConfig:
    weight: float = 1.0  # SLIP: loss = clip + 1.0 * simclr
    temperature: float = 0.1
    hidden_dim: int = 4096
    out_dim: int = 256
    crop_scale: Tuple[float, float] = (0.08, 1.0)


@dataclass
class MAEConfig:
    weight: float = 1.0  # ours for the CLIP+MAE ablation
    norm_pix: bool = True  # MAE's normalised-pixel target
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(layers=2, width=0, pos_embed="sincos"))


@dataclass
class MaskCLIPConfig:
    """Masked self-distillation. The paper fixes the idea; every number here is ours (docs/training.md)."""

    weight: float = 1.0  # ours
    # "full": the student's full-image pass gives the contrastive loss (as CLIP; the paper's design);
    # "masked": the masked student's pooled tokens do (FLIP-style): no full-image student pass, about
    # CLIP's cost; an opt-in of ours, not the paper's
    contrastive_view: str = "full"
    loss: str = "soft"  # "soft" (prototypes, iBOT style) | "cosine"; ours: soft
    num_prototypes: int = 8192  # ours
    head_hidden_dim: int = 2048  # ours (DINO's head)
    head_bottleneck_dim: int = 256  # ours (DINO's head)
    student_temp: float = 0.1  # ours (iBOT)
    teacher_temp: float = 0.04  # ours (iBOT)
    center_momentum: float = 0.9  # ours (DINO)
    momentum: float = 0.996  # teacher EMA momentum at step 0, cosine to momentum_end (ours, BYOL/DINO)
    momentum_end: float = 1.0
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(norm_input=False))
    text: bool = True  # the CVPR version's text branch; switchable
    text_mask_ratio: float = 0.15  # ours (BERT's rate)
    text_weight: float = 1.0  # ours
    text_decoder_layers: int = 1  # ours


@dataclass
class RILSConfig:
    """RILS as its released code does it (hustvl/RILS)."""

    weight: float = 0.5
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(layers=1, width=0, pos_embed="sincos"))


@dataclass
class TrainConfig:
    """Everything a training run needs; ``TrainConfig.from_preset("tiny", "maskclip")`` is a good start."""

    recipe: str = "clip"
    preset: str = ""
    # model: a named architecture (maskclip.architecture_config) with field overrides, or weights to start from
    model: str = "vit-b-16"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    # the image-text term of every recipe: "clip" (softmax InfoNCE) | "siglip" (sigmoid, Zhai et al. 2023:
    # the model gets a learned logit_bias, and starts from scale 10 and bias -10, the paper's values)
    loss: str = "clip"
    init_from: str = ""  # a name/path maskclip.load reads: fine-tune from these weights instead of random init
    # data
    data: List[str] = field(default_factory=list)  # tar shards (globs or {a..b}), a CSV/TSV, or "synthetic:train"
    samples_per_epoch: int = 0  # 0: the dataset's size (known for CSV and synthetic; required for shards)
    # a CSV's columns and separator ("": the one column named image/filepath/..., caption/title/...;
    # the separator sniffed), as open_clip's --csv-img-key / --csv-caption-key / --csv-separator
    csv_image_key: str = ""
    csv_caption_key: str = ""
    csv_separator: str = ""
    crop_scale: Tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop of the contrastive view (SLIP)
    workers: int = 2
    # schedule
    batch_size: int = 4096  # global: per-device batch = batch_size // (world size * accum_steps)
    epochs: float = 25
    steps: int = 0  # total optimizer steps; 0: epochs * samples_per_epoch // batch_size
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_start_lr: float = 1e-6
    warmup_epochs: float = 1.0
    warmup_steps: int = 0  # > 0 overrides warmup_epochs
    weight_decay: float = 0.5
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    logit_scale_max: float = 100.0  # clamp exp(logit_scale) (CLIP)
    # numerics and memory
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler)
    grad_clip: float = 0.0  # max global grad norm; 0: off
    accum_steps: int = 1
    # with accum_steps > 1: "cached" (open_clip's --accum-freq): a no-grad pass caches every micro-batch's
    # features, so the image-text term is the whole batch's (one extra forward of both towers);
    # "micro": each micro-batch's term against its own negatives only (cheaper, a smaller batch's loss)
    accum_mode: str = "cached"
    grad_checkpointing: bool = False
    patch_dropout: float = 0.0  # FLIP: drop this fraction of patch tokens in the contrastive pass (training only)
    distributed: str = "ddp"  # ddp | fsdp
    compile: bool = False
    # torch's intra-op threads on a CPU: 0 = torch's default less one per data worker (workers decode
    # and augment on the same cores; an oversubscribed core stalls every thread of each op)
    cpu_threads: int = 0
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: no periodic evaluation
    eval_data: str = ""  # what the evaluation hook classifies (e.g. "synthetic:val")
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    tensorboard: bool = False
    progress: bool = True
    # per-recipe settings
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    slip: SLIPConfig = field(default_factory=SLIPConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    maskclip: MaskCLIPConfig = field(default_factory=MaskCLIPConfig)
    rils: RILSConfig = field(default_factory=RILSConfig)

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset: str, recipe: str, overrides: Optional[Dict[str, Any]] = None) -> "TrainConfig":
        """The preset's fields, then its per-recipe fields, then ``overrides`` (dotted keys allowed)."""
        presets = load_presets()
        if preset not in presets:
            raise ConfigError(f"unknown training preset {preset!r}; known: {sorted(presets)}")
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; known: {list(RECIPES)}")
        p = copy.deepcopy(presets[preset])
        per_recipe = p.pop("recipes", {}).get(recipe, {})
        d = _merge(_merge(p, per_recipe), {"recipe": recipe, "preset": preset})
        for key, value in (overrides or {}).items():
            _set_dotted(d, key, value)
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        return _build(cls, d, "train").validate()

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self, path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None

    def with_overrides(self, overrides: Dict[str, Any]) -> "TrainConfig":
        d = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(d, key, value)
        return TrainConfig.from_dict(d)

    # --- checks ------------------------------------------------------------------------------

    def validate(self) -> "TrainConfig":
        _choice("recipe", self.recipe, RECIPES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("distributed", self.distributed, DISTRIBUTED)
        _choice("loss", self.loss, LOSSES)
        _choice("accum_mode", self.accum_mode, ACCUM_MODES)
        for name in ("batch_size", "accum_steps", "log_every", "ckpt_every", "keep_checkpoints", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "min_lr", "warmup_start_lr", "grad_clip", "epochs", "steps",
                     "samples_per_epoch", "warmup_epochs", "warmup_steps", "eval_every", "workers", "cpu_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative; got {getattr(self, name)}")
        if not 0 <= self.patch_dropout < 1:
            raise ConfigError(f"patch_dropout must be in [0, 1); got {self.patch_dropout}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < min <= max <= 1; got {list(self.crop_scale)}")
        for section in (self.mae, self.maskclip, self.rils):
            _check_masking(section.masking)
            _choice("decoder pos_embed", section.decoder.pos_embed, ("learned", "sincos"))
        _choice("maskclip loss", self.maskclip.loss, ("soft", "cosine"))
        _choice("maskclip contrastive_view", self.maskclip.contrastive_view, ("full", "masked"))
        if not 0 < self.maskclip.text_mask_ratio < 1:
            raise ConfigError(f"maskclip.text_mask_ratio must be in (0, 1); got {self.maskclip.text_mask_ratio}")
        if self.patch_dropout > 0 and self.recipe == "rils":
            raise ConfigError("patch_dropout does not apply to rils: its contrastive pass also gives the "
                              "reconstruction targets, one per patch, so it must see every patch; set "
                              f"patch_dropout=0 (got {self.patch_dropout})")
        if self.patch_dropout > 0 and self.recipe == "maskclip" and self.maskclip.contrastive_view == "masked":
            raise ConfigError("patch_dropout does not apply to maskclip with contrastive_view='masked': the "
                              "contrastive loss then uses the masked student, not a full-image pass; set "
                              f"patch_dropout=0 or contrastive_view='full' (got {self.patch_dropout})")
        return self


def _check_masking(m: MaskingConfig) -> None:
    if not 0 < m.ratio < 1:
        raise ConfigError(f"masking ratio must be in (0, 1); got {m.ratio}")
    _choice("masking strategy", m.strategy, ("random", "block"))
    _choice("masking mode", m.mode, ("drop", "token"))


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}; got {value!r}")


def load_presets() -> Dict[str, Dict[str, Any]]:
    """The bundled presets (``maskclip/resources/presets.json``)."""
    return resources.read_json("presets.json")


# --- dict <-> dataclass ----------------------------------------------------------------------

def _merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            and k != "model_overrides" else v
    return out


def _set_dotted(d: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is not a section")
    d[parts[-1]] = value


def _build(cls, d: Dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {where!r} must be an object; got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {where} config keys {unknown}; known keys are {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        factory = fields[name].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]) and factory is not dataclasses.MISSING:
            # A partial section fills in from the field's own default (MAEConfig's decoder is sin-cos),
            # not from the section class's defaults.
            value = _merge(dataclasses.asdict(factory()), value)
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(tp, value, where: str):
    """Check ``value`` against the annotation ``tp`` (JSON types), converting lists to tuples where declared."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[...]
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        return _coerce(tp, value, where)
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values; got {value!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list, List):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_coerce(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object; got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {tp.__name__}; got {type(value).__name__} {value!r}")
    return value


def parse_override(text: str) -> Tuple[str, Any]:
    """``"maskclip.loss=cosine"`` -> ``("maskclip.loss", "cosine")``; values parse as JSON when they can."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"overrides look like key=value (e.g. lr=1e-3, maskclip.loss=cosine); got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
