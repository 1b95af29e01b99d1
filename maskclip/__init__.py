"""maskclip: language-image models with masked self-distillation, and every CLIP checkpoint."""
from .errors import *  # noqa: F401,F403
from .config import ModelConfig, VisionConfig, TextConfig, PreprocessConfig  # noqa: F401

__version__ = "0.1.0"
