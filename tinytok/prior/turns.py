"""The conversation layout's old home, kept so that earlier code and the lessons still
import from here: the layout (picture_ids, turn_ids, conversation_tokens, reply_prompt)
now lives in prior/layouts.py beside the other layouts, and conversation_batch in
training/prior_batches.py beside the other training batches."""
import importlib

from tinytok.prior.layouts import (SPEAKERS, conversation_tokens, picture_ids,  # noqa: F401
                                   reply_prompt, turn_ids)


def __getattr__(name):
    # looked up on first use: training/prior_batches.py imports prior/layouts.py itself
    if name == "conversation_batch":
        return importlib.import_module("tinytok.training.prior_batches").conversation_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
