"""The prior: a causal transformer that writes image codes (and words) one token at a time.

    gpt.py        the transformer as pairs: blocks, the tied head, the next-token loss
    vocab.py      the joint vocabulary of words, image codes and special tokens; layouts
    turns.py      the conversation layout: <user> and <model> turns in one stream
    settings.py   the sampling settings, one value whose defaults are the recommended ones
    sample.py     the one sampler: KV cache, temperature, top-k, top-p, guidance
"""
