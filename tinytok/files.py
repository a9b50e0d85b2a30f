"""Writing a file safely: all of it or none of it, with the permissions a plain write gives.

    write_atomically("ck.npz", lambda f: np.savez(f, **arrays))

The bytes go to a temporary file beside the target, are flushed to disk, and the temporary
file is renamed over the target. A rename within one folder is atomic, so whoever reads the
target (or a crash, a Ctrl-C, a full disk) finds the old complete file or the new complete
one, never half of each.

Permissions follow what ``open(path, "wb")`` would leave: a new file gets 0o666 less the
user's umask (0o644 under the usual umask 022), an overwritten file keeps its mode (a
checkpoint made private with chmod 600 stays private). ``tempfile.mkstemp`` would make
every file 0o600; here the temporary file is created with mode 0o666 and the kernel takes
the umask off, as it does for any new file, so the umask is never read or changed.
"""
import contextlib
import os
import secrets
import stat


def write_atomically(path, write):
    """Call write(f) on a binary file object, then put the result at `path` atomically.

    Raises what write or the file system raises (OSError: disk full, no permission, ...);
    in every case, Ctrl-C included, the temporary file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _new_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())             # the bytes are on disk before the rename
        _keep_mode_of(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _new_file_beside(path):
    """A new, empty file ".NAME.RANDOM.tmp" in path's folder: (file descriptor, its path).

    Same folder, so the final os.replace is a rename within one file system. O_EXCL makes
    the creation fail rather than reuse a file someone else made with the same name.
    """
    folder, name = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp   # the kernel applies the umask
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _keep_mode_of(path, tmp):
    """Give tmp the mode of the file it is about to replace, if there is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        os.chmod(tmp, stat.S_IMODE(mode))


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); harmless to skip where unsupported."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
