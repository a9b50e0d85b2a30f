"""Save and load everything needed to resume training, as one safe, atomic .npz file.

    save_checkpoint("runs/tok/ckpt.npz", kind="tokenizer", params=params, config=cfg,
                    step=step, optimizer_state=opt_state, extra={"losses": losses})
    ckpt = load_checkpoint("runs/tok/ckpt.npz", kind="tokenizer")
    check_params_match(ckpt.params, init_params(cfg), ckpt.path)
    params = backend.params_to_device(ckpt.params)

On disk it is an ordinary NumPy .npz (a zip of .npy files) that ``np.load`` can open:

    meta                 uint8 (n,)  UTF-8 JSON, see below
    params/<key>         one array per parameter, dtype and shape as saved
    optim/<path>         the arrays inside optimizer_state, e.g. optim/m/enc.conv1.w
    extra/<path>         the arrays inside extra, if any

    meta = {"format": "tinytok-checkpoint", "version": 1, "kind": "tokenizer", "step": 1200,
            "config": {...}, "arrays": ["params/enc.conv1.w", ..., "optim/m/enc.conv1.w", ...],
            "optimizer_state": {"m": {"enc.conv1.w": {"__ndarray__": "optim/m/enc.conv1.w"},
                                      ...}, "t": 1200},
            "extra": {"losses": [0.9, 0.7, ...]}}

optimizer_state and extra keep their nesting in the JSON; each array in them is stored as
an array and replaced by a reference {"__ndarray__": name}. Tuples come back as lists and
NumPy scalars as Python numbers (same value).

Why no pickle: ``np.load(allow_pickle=True)`` on a file someone sent you can run any code.
A checkpoint here holds only plain arrays and JSON, and loading refuses anything else.

Why atomic: training is often killed mid-save (Ctrl-C, a time limit). Writing to a temporary
file and renaming it over the old one means the file at `path` is always either the old
complete checkpoint or the new complete one, never half of each.
"""
import dataclasses
import json
import os

import numpy as np

from tinytok import backend
from tinytok.errors import CheckpointError
from tinytok.files import write_atomically
from tinytok.ops.checks import is_whole_number

FORMAT_NAME = "tinytok-checkpoint"
FORMAT_VERSION = 1
META = "meta"               # name of the JSON metadata array in the .npz
ARRAY_REF = "__ndarray__"   # marks an array reference inside the JSON trees
PARAMS_PREFIX = "params/"


@dataclasses.dataclass
class Checkpoint:
    """What load_checkpoint returns. Arrays are NumPy; move them with backend.params_to_device."""
    kind: str
    params: dict = dataclasses.field(repr=False)
    config: dict
    step: int
    optimizer_state: object = dataclasses.field(repr=False)
    extra: dict = dataclasses.field(repr=False)
    path: str


# ----------------------------------------------------------------------------------------
# Saving

def save_checkpoint(path, *, kind, params, config, step=0, optimizer_state=None, extra=None):
    """Write one checkpoint file atomically, creating parent directories.

    kind: what the params belong to, e.g. "tokenizer" or "prior" (checked on load).
    params: {name: array} (NumPy or CuPy); dtypes and shapes are kept exactly.
    config: JSON-able dict (str keys; numbers, strings, bools, None, lists, dicts).
    step: the number of optimizer steps taken, an int >= 0.
    optimizer_state: e.g. optim.adamw_init's dict; nested dicts/lists of arrays and scalars.
    extra: JSON-able dict of other training state (loss history, RNG states); arrays inside
    are stored as arrays.
    The file is written exactly at `path` (no ".npz" is appended).
    """
    path = os.fspath(path)
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"cannot save {path}: kind must be a non-empty string, "
                              f"got {kind!r}")
    if not is_whole_number(step):
        raise CheckpointError(f"cannot save {path}: step must be an integer >= 0, "
                              f"got {step!r}")
    for name, value in (("config", config), ("extra", extra or {})):
        if not isinstance(value, dict):
            raise CheckpointError(f"cannot save {path}: {name} must be a dict, "
                                  f"got {type(value).__name__}")
    arrays = {PARAMS_PREFIX + k: _host_array(v, f"params[{k!r}]", path)
              for k, v in _check_params(params, path).items()}
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "step": int(step),
            "config": _to_json(config, "config", path, None, None),
            "optimizer_state": _to_json(optimizer_state, "optimizer_state", path, arrays,
                                        "optim"),
            "extra": _to_json(extra or {}, "extra", path, arrays, "extra")}
    meta["arrays"] = list(arrays)
    arrays = {META: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays}
    write_npz_atomic(path, arrays)


def _check_params(params, path):
    if not isinstance(params, dict):
        raise CheckpointError(f"cannot save {path}: params must be a dict of arrays, "
                              f"got {type(params).__name__}")
    for k in params:
        if not isinstance(k, str):
            raise CheckpointError(f"cannot save {path}: parameter name {k!r} is not a string")
    return params


def _host_array(a, where, path):
    """a as a NumPy array, refusing anything that would need pickle to store."""
    if not _is_array(a):
        raise CheckpointError(f"cannot save {path}: {where} is a {type(a).__name__}, "
                              "not an array")
    a = backend.to_numpy(a)
    if a.dtype.hasobject:
        raise CheckpointError(f"cannot save {path}: {where} is an object array, which "
                              "could only be stored with pickle")
    return a


def _to_json(tree, where, path, arrays, prefix):
    """A JSON-able copy of tree; its arrays go into `arrays` under prefix/<path in tree>.

    With arrays=None (config) an array is an error. Dict keys must be strings: JSON would
    quietly turn {1: ...} into {"1": ...} and the resume would not be exact.
    """
    if _is_array(tree):
        if arrays is None:
            raise CheckpointError(f"cannot save {path}: {where} is an array; "
                                  "config must be plain JSON")
        if prefix in arrays:
            raise CheckpointError(f"cannot save {path}: two arrays would share the name "
                                  f"{prefix!r} (keys containing '/'?)")
        arrays[prefix] = _host_array(tree, where, path)
        return {ARRAY_REF: prefix}
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str) or k == ARRAY_REF:
                raise CheckpointError(f"cannot save {path}: key {k!r} in {where} must be a "
                                      f"string other than {ARRAY_REF!r}")
            out[k] = _to_json(v, f"{where}[{k!r}]", path, arrays, f"{prefix}/{k}")
        return out
    if isinstance(tree, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]", path, arrays, f"{prefix}/{i}")
                for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):        # np.float32(0.5) -> 0.5, np.int64(3) -> 3
        return _to_json(tree.item(), where, path, arrays, prefix)
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise CheckpointError(f"cannot save {path}: {where} is a {type(tree).__name__}, "
                          "neither an array nor JSON-able")


def write_npz_atomic(path, arrays):
    """np.savez to `path` atomically (tinytok.files): the old file or the new, never half."""
    if os.path.isdir(path):
        raise CheckpointError(f"cannot save {path}: it is a directory")
    try:
        write_atomically(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise CheckpointError(f"cannot save {path}: {e}") from e


# ----------------------------------------------------------------------------------------
# Loading

def load_checkpoint(path, kind=None):
    """Read a checkpoint written by save_checkpoint; arrays come back as NumPy.

    kind: if given, the checkpoint must hold that kind ("tokenizer", "prior", ...).
    Raises one CheckpointError naming the file and the problem for a missing, empty,
    truncated, corrupt, foreign, pickled or newer-format file, or the wrong kind.
    """
    path = os.fspath(path)
    _sniff(path)
    arrays = read_npz_safely(path)
    meta = _read_meta(path, arrays)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"expected a {kind} checkpoint but {path} holds a "
                              f"{meta['kind']}")
    _check_array_list(path, meta["arrays"], arrays)
    params = {name[len(PARAMS_PREFIX):]: arrays[name] for name in meta["arrays"]
              if name.startswith(PARAMS_PREFIX)}
    return Checkpoint(kind=meta["kind"], params=params, config=meta["config"],
                      step=meta["step"],
                      optimizer_state=_from_json(meta["optimizer_state"], arrays, path),
                      extra=_from_json(meta["extra"], arrays, path), path=path)


def _sniff(path):
    """Look at the first bytes, to name the problem before np.load guesses at it."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    if not head:
        raise CheckpointError(f"checkpoint file {path} is empty (0 bytes)")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):     # a zip archive, as .npz files are
        return
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"{path} is not a tinytok checkpoint: it is a single .npy "
                              "array, not an .npz archive")
    if head.startswith(b"\x80"):                            # pickle protocol 2 and later
        raise CheckpointError(f"{path} holds pickled data; refusing to load pickled data "
                              "(it can run arbitrary code)")
    raise CheckpointError(f"{path} is not a tinytok checkpoint: it is not an .npz archive")


def read_npz_safely(path):
    """Every array in the archive, read eagerly with allow_pickle=False."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):                        # an object (pickled) array
            raise CheckpointError(f"{path} holds a pickled object array; refusing to load "
                                  "pickled data (it can run arbitrary code)") from None
        raise _corrupt(path, e) from e
    except Exception as e:
        # A damaged zip makes zipfile and the .npy reader raise almost anything:
        # BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError, the error zipfile gives
        # for a garbled compression method, struct.error, MemoryError (a garbled shape)...
        raise _corrupt(path, e) from e
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):                   # a zip member that is not .npy
            raise CheckpointError(f"{path} is not a tinytok checkpoint: its entry {name!r} "
                                  "is not a NumPy array")
    return arrays


def _corrupt(path, e):
    return CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {e})")


def _read_meta(path, arrays):
    """The parsed, checked metadata dict; removes the meta array from `arrays`."""
    raw = arrays.pop(META, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path} is not a tinytok checkpoint: it has no tinytok "
                              "metadata")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:               # UnicodeDecodeError, JSONDecodeError
        raise CheckpointError(f"{path} has malformed metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a tinytok checkpoint: its metadata does not "
                              f"name the format {FORMAT_NAME!r}")
    version = meta.get("version")
    if not is_whole_number(version) or version != FORMAT_VERSION:
        newer = is_whole_number(version) and version > FORMAT_VERSION
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this "
                              f"tinytok reads version {FORMAT_VERSION}"
                              + (" (upgrade tinytok)" if newer else ""))
    _check_meta_fields(path, meta)
    return meta


def _check_meta_fields(path, meta):
    problems = []
    if not isinstance(meta.get("kind"), str):
        problems.append("'kind' is not a string")
    if not is_whole_number(meta.get("step")):
        problems.append("'step' is not an integer >= 0")
    if not isinstance(meta.get("config"), dict):
        problems.append("'config' is not a dict")
    if not isinstance(meta.get("extra"), dict):
        problems.append("'extra' is not a dict")
    if "optimizer_state" not in meta:
        problems.append("'optimizer_state' is missing")
    names = meta.get("arrays")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("'arrays' is not a list of names")
    if problems:
        raise CheckpointError(f"{path} has malformed metadata: {'; '.join(problems)}")


def _check_array_list(path, names, arrays):
    """The arrays on disk must be exactly those the metadata lists."""
    listed = set(names)
    missing = [n for n in names if n not in arrays]
    unexpected = [n for n in arrays if n not in listed]
    if missing or unexpected:
        raise CheckpointError(f"{path} is corrupt: arrays listed in its metadata but absent: "
                              f"{_names(missing) or 'none'}; present but not listed: "
                              f"{_names(unexpected) or 'none'}")


def _from_json(tree, arrays, path):
    """Undo _to_json: replace each {"__ndarray__": name} by the array itself."""
    if isinstance(tree, dict):
        if set(tree) == {ARRAY_REF}:
            name = tree[ARRAY_REF]
            if not isinstance(name, str) or name not in arrays:
                raise CheckpointError(f"{path} has malformed metadata: it refers to an "
                                      f"array {name!r} that the file does not hold")
            return arrays[name]
        return {k: _from_json(v, arrays, path) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_from_json(v, arrays, path) for v in tree]
    return tree


# ----------------------------------------------------------------------------------------
# Checking loaded params against a model

def check_params_match(params, expected, path=None):
    """Raise CheckpointError unless params has exactly expected's keys and shapes.

    expected: a reference param dict, e.g. a freshly initialised model of the same config.
    The message lists missing and unexpected keys and the first few shape mismatches.
    """
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    mismatched = [f"{k!r} is {tuple(params[k].shape)}, the model expects "
                  f"{tuple(expected[k].shape)}"
                  for k in expected if k in params and params[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if mismatched:
        shown = "; ".join(mismatched[:3])
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        problems.append(f"{len(mismatched)} with the wrong shape: {shown}{more}")
    if problems:
        who = f"checkpoint {path} does" if path is not None else "parameters do"
        raise CheckpointError(f"{who} not match the model: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------
# Small helpers

def _is_array(x):
    return isinstance(x, np.ndarray) or backend.is_cupy_array(x)


def _names(keys, limit=5):
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
