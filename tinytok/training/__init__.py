"""Training: the shared loop, both trainers, their batch-parts steps, AdamW, checkpoints.

    loop.py               TrainSettings; the loop: Ctrl-C between steps, NaN guards, resume
    progress.py           tqdm bars on a terminal or in a notebook, plain lines in a log
    steps.py              one step's gradients for each model, on batch parts (every core)
    tokenizer_trainer.py  TokenizerRecipe, train_tokenizer
    prior_data.py         PriorData, and the shapes encoded once by a tokenizer (cached)
    prior_batches.py      the prior's batches: which layouts, how often, caption dropout
    prior_trainer.py      train_prior
    conversations.py      conversations for the prior: draw, describe, edit, ask
    optim.py              AdamW, gradient clipping, the learning-rate schedule
    checkpoint.py         atomic, pickle-free .npz checkpoints

The names most used are here too: ``from tinytok.training import train_tokenizer``.
"""

# name -> the module defining it; imported on first use, so that importing one module of
# the package (checkpoint, say, which the pipeline reads) does not load every trainer.
_WHERE = {"TrainSettings": "loop", "TrainingStopped": "loop", "TrainingDiverged": "loop",
          "TokenizerRecipe": "tokenizer_trainer", "train_tokenizer": "tokenizer_trainer",
          "PriorData": "prior_data", "train_prior": "prior_trainer"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        from importlib import import_module
        return getattr(import_module(f"tinytok.training.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tinytok.training' has no attribute {name!r}")
