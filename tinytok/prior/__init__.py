"""The prior: a causal transformer that writes image codes (and words) one token at a time.

    gpt.py        the transformer as pairs: blocks, the tied head, the next-token loss;
                  the same forward with a KV cache, for sampling
    vocab.py      the joint vocabulary of words, image codes and special tokens; layouts
    turns.py      the conversation layout: <user> and <model> turns in one stream
    settings.py   the sampling settings, one value whose defaults are the recommended ones
    sample.py     the one sampler: next-token logits (with the KV cache or without),
                  temperature, top-k, top-p, guidance
"""
