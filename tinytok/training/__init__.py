"""Training: the loop (progress, Ctrl-C, exact resume), both trainers, AdamW, checkpoints."""
