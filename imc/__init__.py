"""imc: offline image matching and Structure-from-Motion for Kaggle's Image Matching Challenge."""

__version__ = "0.1.0"
