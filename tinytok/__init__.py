"""tinytok: discrete image tokens from scratch.

A VQ-VAE tokenizer turns a picture into a grid of codebook ids, a small causal transformer
writes such ids one by one after a caption, and the decoder turns them back into pixels.
Every forward and backward pass is written by hand in NumPy and runs unchanged on CuPy.
"""
from tinytok import backend

__version__ = "0.1.0"
__all__ = ["backend", "__version__"]
