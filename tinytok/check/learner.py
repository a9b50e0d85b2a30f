"""The learner's file: imported as a module of its own, its functions called with care.

Anything can go wrong in a file being written: it may not exist, not parse, raise while it
imports, or lack a function. Each of those is one line naming the file, the line and what
was expected (a ConfigError, so the command line exits with 2). Once loaded, an exception
inside the learner's function is not the checker's failure but a finding: LearnerError,
with the file's line number, which the checker prints as that function's result.
"""
import importlib.util
import os
import sys
import traceback
from typing import Callable, NamedTuple

from tinytok.errors import ConfigError


class LearnerError(Exception):
    """The learner's function raised; the message says what and where."""


class Pair(NamedTuple):
    path: str
    forward: Callable
    backward: Callable


def load_pair(path, op):
    """The learner's OP_forward and OP_backward from the Python file at path."""
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise ConfigError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder; give the Python file with {op.name}_forward "
                          f"and {op.name}_backward")
    module = import_file(path)
    missing = [signature for function, signature in
               ((f"{op.name}_forward", op.forward_signature()),
                (f"{op.name}_backward", op.backward_signature()))
               if not callable(getattr(module, function, None))]
    if missing:
        raise ConfigError(f"{name} defines no " + " and no ".join(missing))
    return Pair(os.path.abspath(path), getattr(module, f"{op.name}_forward"),
                getattr(module, f"{op.name}_backward"))


def import_file(path):
    """Run the file as a fresh module; its folder is importable meanwhile (for helpers)."""
    folder = os.path.dirname(os.path.abspath(path))
    spec = importlib.util.spec_from_file_location("tinytok_exercise", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too: the file's code is not ours to trust
        raise ConfigError(f"{os.path.basename(path)} does not import: "
                          f"{where_and_what(e, path)}") from None
    finally:
        sys.path.remove(folder)
    return module


def where_and_what(error, path):
    """'line 12: ValueError: ...': the deepest line of path in the traceback, and the
    exception's last line."""
    what = traceback.format_exception_only(type(error), error)[-1].strip()
    if isinstance(error, SyntaxError) and error.lineno:
        return f"line {error.lineno}: {what}"
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    return f"line {lines[-1]}: {what}" if lines else what


def call(function, path, *args, **kwargs):
    """function(*args, **kwargs), an exception inside it turned into a LearnerError."""
    try:
        return function(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise LearnerError(f"{function.__name__} raised at {where_and_what(e, path)}") from None
