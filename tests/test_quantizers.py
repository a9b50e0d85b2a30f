"""The quantizers: each forward's cache is a named tuple of its own type (the op contract)."""
import numpy as np

from tinytok.tokenizer.fsq import FSQCache, fsq_forward
from tinytok.tokenizer.gumbel import GumbelQuantizeCache, gumbel_quantize_forward
from tinytok.tokenizer.quantize import VectorQuantizeCache, vector_quantize_forward


def test_every_quantizer_returns_a_named_cache_of_its_own():
    rng = np.random.default_rng(0)
    z, codebook = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((5, 3))
    logits = rng.standard_normal((2, 5, 2, 2))
    caches = [vector_quantize_forward(z, codebook)[-1],
              gumbel_quantize_forward(logits, codebook, 0.5)[-1],
              fsq_forward(z, (4, 3, 2))[-1]]
    for cache, kind in zip(caches, (VectorQuantizeCache, GumbelQuantizeCache, FSQCache)):
        assert type(cache) is kind and isinstance(cache, tuple) and cache._fields
    assert caches[0].beta == 0.25 and caches[0].z_shape == z.shape
    assert caches[1].tau == 0.5 and caches[1].logits_shape == logits.shape
