"""The priors: transformers that write image codes (and words), one token at a time (raster),
many codes at a time (masked) or a map at a time, coarse to fine (next-scale).

    gpt.py        the transformer as pairs: blocks, the tied head, the next-token loss;
                  the same forward with a KV cache, for sampling
    vocab.py      the joint vocabulary of words, image codes and special tokens: ids
    layouts.py    the token stream's layouts (caption then picture, picture then caption,
                  conversations), their prompts, and the one step from sequences to
                  inputs and targets (shift, ignore mask, word noise)
    settings.py   the sampling settings, one value whose defaults are the recommended ones
    sample.py     the one sampler: next-token logits (with the KV cache or without),
                  temperature, top-k, top-p, guidance
    masked.py     the masked prior (MaskGIT): its fixed layout with <mask>, the masked
                  training batch, and filling a grid in a few passes (and inpainting)
    scales.py     the next-scale prior (VAR): the maps' inputs from the tokenizer's running
                  sums, the block-causal mask, the per-map loss, drawing a map a pass
    kinds.py      the table of prior kinds (raster, masked, scales): what each attends to,
                  its extra tokens, what it reads and can be asked, how it draws a picture,
                  its recommended sampling
"""
