"""tinytok: discrete image tokens from scratch.

A VQ-VAE tokenizer turns a picture into a grid of codebook ids, a small causal transformer
writes such ids one by one after a caption, and the decoder turns them back into pixels.
Every forward and backward pass is written by hand in NumPy and runs unchanged on CuPy.

    import tinytok
    pipe = tinytok.Pipeline.load()          # the shipped tokenizer and prior
    pictures = pipe.generate(["a large red circle at the top left"], n=4)   # recommended
    pictures = pipe.generate(["a large red circle"], n=4, sampling=tinytok.PLAIN)  # plain

The package, by stage (each layer imports only from the layers before it):

    backend, errors, gradcheck     the array-module switch; error types; gradient checks
    files                          atomic writes that keep the user's permissions
    ops/                           the op pairs, each its formula
    tokenizer/, prior/             the two models, built from op pairs
    data/                          captioned shapes, photographs, image folders
    parallel                       speed: batch parts on every core, BLAS threads
    training/                      the loop, both trainers, AdamW, checkpoints
    pipeline, evaluate, viz, demo, bench, cli    what a user holds and runs
"""
from tinytok import backend
from tinytok.prior.settings import PLAIN, SAMPLING, Sampling

__version__ = "0.1.0"
__all__ = ["Pipeline", "Prior", "Tokenizer", "Sampling", "SAMPLING", "PLAIN", "backend",
           "__version__"]


def __getattr__(name):
    """Pipeline, Tokenizer and Prior, imported on first use (``import tinytok`` stays light)."""
    if name in ("Pipeline", "Prior", "Tokenizer"):
        from tinytok import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'tinytok' has no attribute {name!r}")
