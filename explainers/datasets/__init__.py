"""Data sets with ground truth for comparing explanations, and the sample gallery shipped with the repo."""

from .cluttered_digits import ClutteredDigits, cluttered_digits
from .gallery import GalleryItem, load_gallery

__all__ = ["ClutteredDigits", "GalleryItem", "cluttered_digits", "load_gallery"]
