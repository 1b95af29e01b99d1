"""maskclip: language-image models with masked self-distillation, and every CLIP checkpoint.

>>> import maskclip
>>> model = maskclip.load("openai-vitb16")
>>> probs = model.classify("cat.jpg", ["a cat", "a dog"])
"""
from .config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig, architecture_config
from .errors import (ConfigError, ImageNotFoundError, ImageReadError, InputError, InputTypeError,
                     MaskCLIPError, ModelNotFoundError, WeightsError, WeightsUnavailableError)
from .hub import available_models, load, model_info
from .model import DualEncoder, MaskCLIP
from .onnx_export import export_onnx
from .open_clip_models import open_clip_names
from .tokenizer import tokenize
from .version import __version__
from .zero_shot import imagenet_classnames, template_sets


__all__ = [
    "DualEncoder", "MaskCLIP", "ModelConfig", "VisionConfig", "TextConfig", "PreprocessConfig", "architecture_config",
    "load", "available_models", "model_info", "open_clip_names", "tokenize", "imagenet_classnames", "template_sets", "export_onnx",
    "MaskCLIPError", "InputError", "InputTypeError", "ImageReadError", "ImageNotFoundError",
    "ModelNotFoundError", "WeightsUnavailableError", "WeightsError", "ConfigError",
]
