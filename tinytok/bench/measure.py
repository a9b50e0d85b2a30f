"""The benchmark's clocks: timing a closure on the device, and the process's resident memory.

Standard library only, so that a lesson or another measurement can time with it alone.
"""
import statistics
import sys
import time


def synchronize(xp):
    """Wait for the device to finish queued work (CuPy); a no-op on NumPy."""
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def time_it(fn, xp, warmup, repeats):
    """Milliseconds of fn(): {"median", "min", "max", "repeats"} over `repeats` timed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        synchronize(xp)
        t0 = time.perf_counter()
        fn()
        synchronize(xp)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "repeats": len(times)}


def time_in_turn(fns, xp, warmup, repeats):
    """time_it for several closures compared with each other: each warmed up, then timed
    once per round in turn, so that a machine that gets busier or quieter during the
    measurement weighs on all of them alike. A list of time_it's dicts, in fns' order."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for fn, ms in zip(fns, times):
            ms.append(time_it(fn, xp, 0, 1)["median"])
    return [{"median": statistics.median(ms), "min": min(ms), "max": max(ms),
             "repeats": len(ms)} for ms in times]


def rss_mb():
    """(current, peak) resident size of this process in MB, from /proc (None where absent)."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields.get("VmRSS"), fields.get("VmHWM")


def peak_rss_mb():
    """Peak resident size of the whole process so far, in MB.

    VmHWM from /proc where there is one: Linux's ru_maxrss also counts the memory of the
    parent a process was forked from (it is carried across exec), so a section started from
    a big process (pytest, a torch peer) would report the parent's size instead of its own.
    """
    _, hwm = rss_mb()
    if hwm is not None:
        return hwm
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB

