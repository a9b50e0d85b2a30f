"""The exceptions tinytok raises on bad input.

Each subclasses a built-in exception too (ValueError, TypeError, ...), so code that already
catches those keeps working, while callers who want to can catch exactly one kind.
The command line turns any TinytokError into a one-line message and exit code 2.
"""


class TinytokError(Exception):
    """Base class of every error tinytok raises on purpose."""


class ShapeError(TinytokError, ValueError):
    """An array has the wrong number of dimensions or the wrong sizes."""


class DTypeError(TinytokError, TypeError):
    """An array has the wrong dtype (for example ints where floats are needed)."""


class BackendError(TinytokError, RuntimeError):
    """The requested array backend (NumPy or CuPy) cannot be used here."""


class CheckpointError(TinytokError, ValueError):
    """A checkpoint file is missing, corrupt, unsafe, foreign or does not match."""


class ImageError(TinytokError, ValueError):
    """An image file or array cannot be read or has an unusable size or mode."""


class PromptError(TinytokError, ValueError):
    """A text prompt is empty, too long, or uses words the model does not know."""


class ContextFullError(PromptError):
    """A conversation has no room left in the prior's context for the next reply."""


class ConfigError(TinytokError, ValueError):
    """A hyperparameter or command-line argument is outside its allowed range."""
