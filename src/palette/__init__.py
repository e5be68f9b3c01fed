"""palette: Palette image-to-image diffusion models (Saharia et al., SIGGRAPH 2022)."""

from .api import Palette
from .config import Config, preset
from .errors import PaletteError
from .model import PaletteModel

__version__ = "0.1.0"
__all__ = ["Config", "Palette", "PaletteError", "PaletteModel", "preset"]
