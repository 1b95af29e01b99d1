"""Exceptions raised at the public API boundary.

Each subclasses the built-in exception a caller would naturally catch (``ValueError``,
``TypeError``, ``FileNotFoundError``), so ``except ValueError`` keeps working, while
``except maskclip.MaskCLIPError`` catches everything this package raises on purpose.
"""


class MaskCLIPError(Exception):
    """Base class of every error maskclip raises deliberately."""


class InputError(MaskCLIPError, ValueError):
    """An argument has the right type but a wrong value (shape, range, emptiness, ...)."""


class InputTypeError(MaskCLIPError, TypeError):
    """An argument has a type the API does not accept."""


class ImageReadError(InputError):
    """An image file exists but cannot be decoded, or is too large to decode safely."""


class ModelNotFoundError(MaskCLIPError, FileNotFoundError):
    """A model name, path or Hub repo does not resolve to loadable weights."""


class WeightsUnavailableError(ModelNotFoundError):
    """A registered model has no published weights (e.g. ``vitb16-yfcc``)."""


class WeightsError(MaskCLIPError, ValueError):
    """Weights exist but are corrupt, truncated, unsafe (pickle) or do not match the config."""


class ConfigError(MaskCLIPError, ValueError):
    """A model config is malformed, of an unknown version, or inconsistent."""


class ImageNotFoundError(MaskCLIPError, FileNotFoundError):
    """An image path does not exist."""
