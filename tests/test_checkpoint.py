"""Checkpoints: exact round trips, atomic writes, and one clear error for every bad file."""
import json
import math
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytok.training.checkpoint import (Checkpoint, check_params_match, load_checkpoint,
                                         save_checkpoint)
from tinytok.errors import CheckpointError


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"enc.conv1.w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "enc.conv1.b": rng.standard_normal(4).astype(np.float32),
            "quant.codebook": rng.standard_normal((8, 4)),              # float64
            "gpt.pos": rng.standard_normal((5, 4)).astype(np.float16)}


def make_state(params):
    return {"m": {k: v + 1 for k, v in params.items()},
            "v": {k: v * v for k, v in params.items()},
            "t": 7, "betas": (0.9, 0.95), "nested": {"count": np.int64(3), "ids": [np.arange(4)]}}


def save_example(path, **overrides):
    params = make_params()
    kw = dict(kind="tokenizer", params=params, config={"width": 64, "lr": 3e-4, "name": "ref",
                                                       "sizes": [1, 2], "maybe": None},
              step=42, optimizer_state=make_state(params),
              extra={"losses": [0.5, 0.25, 1 / 3, float("inf")],
                     "rng": np.random.default_rng(5).bit_generator.state,
                     "table": np.eye(2, dtype=np.float32)})
    kw.update(overrides)
    save_checkpoint(path, **kw)
    return kw


def assert_tree_equal(a, b):
    """Equal nesting, equal values, arrays equal with equal dtypes."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)     # tuples come back as lists
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    else:
        assert type(b) is type(a.item() if isinstance(a, np.generic) else a)
        assert a == b or (math.isnan(a) and math.isnan(b))


# ---------------------------------------------------------------------------------------
# Round trips

def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "ck.npz"
    saved = save_example(path)
    ck = load_checkpoint(path, kind="tokenizer")
    assert isinstance(ck, Checkpoint)
    assert (ck.kind, ck.step, ck.path) == ("tokenizer", 42, str(path))
    assert ck.config == saved["config"]
    assert_tree_equal(saved["params"], ck.params)
    assert ck.params["enc.conv1.w"].dtype == np.float32
    assert ck.params["gpt.pos"].dtype == np.float16
    assert_tree_equal(saved["optimizer_state"], ck.optimizer_state)
    assert isinstance(ck.optimizer_state["t"], int)
    assert_tree_equal(saved["extra"], ck.extra)
    assert ck.extra["table"].dtype == np.float32                # arrays in extra stay arrays


def test_rng_state_in_extra_resumes_the_same_stream(tmp_path):
    rng = np.random.default_rng(123)
    rng.standard_normal(10)
    save_checkpoint(tmp_path / "ck.npz", kind="prior", params={}, config={},
                    extra={"rng": rng.bit_generator.state})
    expected = rng.standard_normal(5)
    restored = np.random.default_rng()
    restored.bit_generator.state = load_checkpoint(tmp_path / "ck.npz").extra["rng"]
    np.testing.assert_array_equal(restored.standard_normal(5), expected)


def test_defaults_and_stored_format(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, kind="prior", params={"w": np.ones(3)}, config={})
    ck = load_checkpoint(path)
    assert (ck.step, ck.optimizer_state, ck.extra) == (0, None, {})
    with np.load(path, allow_pickle=False) as npz:          # a plain .npz, no pickle needed
        meta = json.loads(npz["meta"].tobytes())
        assert npz["meta"].dtype == np.uint8
        assert sorted(npz.files) == ["meta", "params/w"]
    assert meta["format"] == "tinytok-checkpoint" and meta["version"] == 1
    assert meta["arrays"] == ["params/w"] and meta["kind"] == "prior"


def test_creates_parent_directories_and_overwrites(tmp_path):
    path = tmp_path / "a" / "b" / "ck.npz"
    save_example(path, step=1)
    save_example(path, step=2)
    assert load_checkpoint(path).step == 2
    assert os.listdir(path.parent) == ["ck.npz"]                # no temp files left


def test_repr_does_not_dump_arrays(tmp_path):
    save_example(tmp_path / "ck.npz")
    text = repr(load_checkpoint(tmp_path / "ck.npz"))
    assert "tokenizer" in text and "array(" not in text


# ---------------------------------------------------------------------------------------
# Atomic writes

def test_crash_mid_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    save_example(path, step=1)
    before = path.read_bytes()

    def crashing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")                    # some bytes, then the crash
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(KeyboardInterrupt):
        save_example(path, step=2)
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 1
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_failed_fsync_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    save_example(path, step=1)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CheckpointError, match="No space left"):
        save_example(path, step=2)
    assert load_checkpoint(path).step == 1
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_crash_on_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez", lambda f, **a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_example(tmp_path / "ck.npz")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Saving bad input

@pytest.mark.parametrize("overrides, message", [
    (dict(kind=""), "kind"),
    (dict(step=-1), "step"),
    (dict(step=1.5), "step"),
    (dict(config=[1]), "config must be a dict"),
    (dict(config={"w": np.ones(2)}), "config must be plain JSON"),
    (dict(config={1: "a"}), "key 1"),
    (dict(config={"s": {1, 2}}), "set"),
    (dict(params={"w": [1.0, 2.0]}), "not an array"),
    (dict(params={"w": np.array([{}], dtype=object)}), "object array"),
    (dict(extra={"x": object()}), "neither an array nor JSON-able"),
    (dict(extra={"a/b": np.ones(1), "a": {"b": np.ones(1)}}), "share the name"),
])
def test_save_rejects_bad_input(tmp_path, overrides, message):
    with pytest.raises(CheckpointError, match=message):
        save_example(tmp_path / "ck.npz", **overrides)
    assert os.listdir(tmp_path) == []


def test_save_onto_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        save_example(tmp_path)


# ---------------------------------------------------------------------------------------
# Loading bad files: one CheckpointError, naming the file and the problem

def rewrite(path, meta_fn=None, arrays_fn=None, raw_meta=None):
    """Re-save a real checkpoint with its metadata or arrays altered."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    if meta_fn:
        meta_fn(meta)
    raw = raw_meta if raw_meta is not None else json.dumps(meta).encode()
    arrays["meta"] = np.frombuffer(raw, dtype=np.uint8)
    if arrays_fn:
        arrays_fn(arrays)
    np.savez(path, **arrays)


def expect_error(path, message, kind=None):
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path, kind=kind)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.npz", "does not exist")


def test_directory(tmp_path):
    expect_error(tmp_path, "is a directory")


def test_empty_file(tmp_path):
    (tmp_path / "ck.npz").write_bytes(b"")
    expect_error(tmp_path / "ck.npz", "empty")


def test_wrong_kind(tmp_path):
    save_example(tmp_path / "ck.npz", kind="prior")
    expect_error(tmp_path / "ck.npz", "expected a tokenizer checkpoint but .* holds a prior",
                 kind="tokenizer")


def test_foreign_npz(tmp_path):
    np.savez(tmp_path / "ck.npz", weights=np.ones(3))
    expect_error(tmp_path / "ck.npz", "not a tinytok checkpoint")


def test_npz_with_a_foreign_meta_array(tmp_path):
    np.savez(tmp_path / "ck.npz", meta=np.ones(3))
    expect_error(tmp_path / "ck.npz", "not a tinytok checkpoint")


def test_single_npy_file(tmp_path):
    with open(tmp_path / "ck.npz", "wb") as f:
        np.save(f, np.ones(3))
    expect_error(tmp_path / "ck.npz", "not a tinytok checkpoint.*npy")


def test_text_file(tmp_path):
    (tmp_path / "ck.npz").write_text("hello, not a checkpoint\n")
    expect_error(tmp_path / "ck.npz", "not a tinytok checkpoint")


def test_pickle_file_renamed(tmp_path):
    (tmp_path / "ck.npz").write_bytes(pickle.dumps({"w": np.ones(3)}))
    expect_error(tmp_path / "ck.npz", "refusing to load pickled data")


def test_object_array_inside_a_real_checkpoint(tmp_path):
    path = tmp_path / "ck.npz"
    save_example(path)

    def add_object_array(arrays):                   # np.savez pickles object arrays
        arrays["params/enc.conv1.w"] = np.array([{"evil": 1}], dtype=object)

    rewrite(path, arrays_fn=add_object_array)
    expect_error(path, "refusing to load pickled data")


def test_object_array_in_a_foreign_npz(tmp_path):
    np.savez(tmp_path / "ck.npz", x=np.array([None, "a"], dtype=object))
    expect_error(tmp_path / "ck.npz", "refusing to load pickled data")


def test_newer_format_version(tmp_path):
    save_example(tmp_path / "ck.npz")
    rewrite(tmp_path / "ck.npz", meta_fn=lambda m: m.update(version=2))
    expect_error(tmp_path / "ck.npz", "version 2.*upgrade")


def test_unknown_format_version(tmp_path):
    save_example(tmp_path / "ck.npz")
    rewrite(tmp_path / "ck.npz", meta_fn=lambda m: m.update(version="one"))
    expect_error(tmp_path / "ck.npz", "version 'one'")


def test_other_format_name(tmp_path):
    save_example(tmp_path / "ck.npz")
    rewrite(tmp_path / "ck.npz", meta_fn=lambda m: m.update(format="something-else"))
    expect_error(tmp_path / "ck.npz", "not a tinytok checkpoint")


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b"", b"[" * 100_000])
def test_malformed_metadata_json(tmp_path, raw):
    save_example(tmp_path / "ck.npz")
    rewrite(tmp_path / "ck.npz", raw_meta=raw)
    expect_error(tmp_path / "ck.npz", "malformed metadata|not a tinytok checkpoint")


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(step=-3), "'step'"),
    (lambda m: m.update(config="x"), "'config'"),
    (lambda m: m.pop("kind"), "'kind'"),
    (lambda m: m.update(arrays="params/w"), "'arrays'"),
    (lambda m: m["arrays"].append("params/ghost"), "absent: 'params/ghost'"),
    (lambda m: m["arrays"].remove("extra/table"), "not listed: 'extra/table'"),
    (lambda m: m["extra"].update(bad={"__ndarray__": "nowhere"}), "'nowhere'"),
])
def test_inconsistent_metadata(tmp_path, change, message):
    save_example(tmp_path / "ck.npz")
    rewrite(tmp_path / "ck.npz", meta_fn=change)
    expect_error(tmp_path / "ck.npz", message)


# ---------------------------------------------------------------------------------------
# Damaged files, generated: only CheckpointError may come out, never anything else

@pytest.fixture(scope="module")
def good_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "ck.npz"
    save_example(path)
    return path


@pytest.fixture(scope="module")
def good_bytes(good_path):
    return good_path.read_bytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("damaged") / "ck.npz"


def load_or_checkpoint_error(path):
    """The loaded checkpoint, or None if it raised CheckpointError (anything else fails)."""
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        assert str(path) in str(e)
        return None


quick = settings(max_examples=50, deadline=2000)   # deadline: a hang fails, not stalls


@quick
@given(data=st.data())
def test_truncated_checkpoint(good_bytes, scratch, data):
    cut = data.draw(st.integers(0, len(good_bytes) - 1), label="cut")
    scratch.write_bytes(good_bytes[:cut])
    assert load_or_checkpoint_error(scratch) is None         # any cut loses the zip directory


@quick
@given(data=st.data())
def test_corrupted_checkpoint(good_path, good_bytes, scratch, data):
    damaged = bytearray(good_bytes)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(damaged) - 1),
                                         st.integers(0, 255)), min_size=1, max_size=4),
                      label="flips")
    for position, byte in flips:
        damaged[position] = byte
    scratch.write_bytes(bytes(damaged))
    ck = load_or_checkpoint_error(scratch)
    if ck is not None:
        # Some bytes (zip timestamps, unused fields) do not matter; CRCs guard the rest,
        # so whatever loads must be what was saved.
        reference = load_checkpoint(good_path)
        assert_tree_equal(reference.params, ck.params)
        assert_tree_equal(reference.optimizer_state, ck.optimizer_state)
        assert ck.config == reference.config and ck.step == reference.step


@quick
@given(raw=st.binary(max_size=200), zip_head=st.booleans())
def test_arbitrary_bytes(scratch, raw, zip_head):
    # With a zip signature in front, the bytes reach the zip reader itself.
    scratch.write_bytes((b"PK\x03\x04" if zip_head else b"") + raw)
    load_or_checkpoint_error(scratch)


# ---------------------------------------------------------------------------------------
# Matching loaded params against a model

def test_check_params_match_accepts_same_keys_and_shapes():
    check_params_match(make_params(0), make_params(1), "ck.npz")


def test_check_params_match_lists_the_problems():
    expected = make_params()
    params = dict(expected)
    del params["enc.conv1.b"]
    params["extra.w"] = np.ones(2)
    params["quant.codebook"] = np.ones((16, 4))
    with pytest.raises(CheckpointError) as info:
        check_params_match(params, expected, "runs/ck.npz")
    text = str(info.value)
    assert "runs/ck.npz" in text
    assert "1 missing: 'enc.conv1.b'" in text
    assert "1 unexpected: 'extra.w'" in text
    assert "'quant.codebook' is (16, 4), the model expects (8, 4)" in text


def test_check_params_match_shows_only_the_first_mismatches():
    expected = {f"w{i}": np.ones(i + 1) for i in range(10)}
    params = {k: np.ones(v.size + 1) for k, v in expected.items()}
    with pytest.raises(CheckpointError, match="10 with the wrong shape.*and 7 more") as info:
        check_params_match(params, expected)
    assert "'w3'" not in str(info.value)
    assert str(info.value).startswith("parameters do not match")


# ---------------------------------------------------------------------------------------
# CuPy arrays are saved through the host

def test_saves_cupy_arrays(tmp_path, cupy_module):
    cp = cupy_module
    params = {"w": cp.arange(6, dtype=cp.float32).reshape(2, 3)}
    save_checkpoint(tmp_path / "ck.npz", kind="prior", params=params, config={},
                    optimizer_state={"m": {"w": cp.ones((2, 3))}}, extra={"a": cp.zeros(2)})
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert isinstance(ck.params["w"], np.ndarray) and ck.params["w"].dtype == np.float32
    np.testing.assert_array_equal(ck.params["w"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(ck.optimizer_state["m"]["w"], np.ones((2, 3)))
