"""The tokenizer: pictures to a grid of codebook ids and back (the visual vocabulary).

    vqvae.py      encoder, residual blocks, decoder and the whole VQ-VAE, as pairs
    quantizers.py the table of quantizers: the one place that says what each one does
    quantize.py   the straight-through vector quantizer and the EMA codebook
    codebook.py   codebook care: k-means start, dead-code restarts, usage statistics
    gumbel.py     DALL-E's Gumbel-softmax relaxation, the other way to pick a code
    fsq.py        finite scalar quantization: round each channel, a fixed grid of codes
    cosine.py     ViT-VQGAN's codes: unit vectors (cosine), and a lookup in few dims
                  between two projections (factorized)
    multiscale.py VAR's multi-scale residual quantizer: token maps of growing size, each
                  coding what the coarser ones left (scales)
"""
