"""Quantitative evaluation of label sets (final-layer ground truth; CoSy once the image generator exists)."""
