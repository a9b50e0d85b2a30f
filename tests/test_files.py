"""Written files keep the user's permissions: checkpoints, token caches and pictures.

Each is written atomically (a temporary file renamed over the target, tinytok.files). A new
file gets 0o666 less the umask, as open() would give it, and an overwritten file keeps its
mode; the temporary file never stays behind.
"""
import os
import stat

import numpy as np
import pytest

from tinytok import viz
from tinytok.files import write_atomically
from tinytok.training.checkpoint import save_checkpoint
from tinytok.training.prior_data import save_token_cache


@pytest.fixture
def umask():
    """Set the umask for one test (it is process-wide), then put the old one back."""
    saved = os.umask(0o022)            # reading the umask means setting one
    yield os.umask
    os.umask(saved)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


WRITERS = {
    "checkpoint": lambda p: save_checkpoint(p, kind="tokenizer", params={"w": np.ones(3)},
                                            config={}, step=1),
    "token cache": lambda p: save_token_cache(p, np.zeros((2, 4, 4), np.int64)),
    "picture": lambda p: viz.image_grid(np.zeros((2, 8, 8, 3), np.uint8), path=p),
}
NAMES = {"checkpoint": "ck.npz", "token cache": "tokens.npz", "picture": "grid.png"}


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("what", sorted(WRITERS))
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_0666_less_the_umask(what, mask, expected, umask, tmp_path):
    umask(mask)
    path = tmp_path / NAMES[what]
    WRITERS[what](path)
    assert mode(path) == expected, oct(mode(path))
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("what", sorted(WRITERS))
def test_an_overwritten_file_keeps_its_mode(what, umask, tmp_path):
    umask(0o022)
    path = tmp_path / NAMES[what]
    WRITERS[what](path)
    os.chmod(path, 0o600)                    # made private by its owner
    WRITERS[what](path)
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == [path.name]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "notes.bin"
    write_atomically(path, lambda f: f.write(b"old"))

    def half_then_fail(f):
        f.write(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["notes.bin"]
