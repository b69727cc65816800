"""Where the server's memory comes from, so that what visitors used goes back to the system once they leave.

A day of strangers (bench/soak.py) frees and reallocates tens of GB in blocks of every size from ~100 threads:
prompts' matrices, oneDNN's copies of a model's weights at every reading, pages' small objects. Python's own
allocator keeps a 1 MiB arena while one object in it lives, and glibc's malloc keeps the pages of its heap that a
few long-lived blocks pin: with both tuned, the server still kept +96 to +128 MB after every visitor had left, and
grew +293 to +383 MB over 2,000 sessions on a slower day (docs/reliability.md). jemalloc (Debian's `libjemalloc2`;
`packages.txt` on a Space) groups blocks by size, so the pages freed between long-lived blocks are whole and go
back when the quiet server's sweep purges them (`release_free_memory`). Not on a timer: jemalloc's own decay
(returning pages about a second after they are freed) made a long prompt's reading 12-18 % slower and a small
model's training step 40-60 % slower, every step faulting in afresh what the last one freed. So `python app.py`
runs on jemalloc where it is installed, and on glibc's malloc, tuned, where it is not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

JEMALLOC = "jemalloc"
# Freed pages kept for reuse until `release_free_memory` purges them (its default returns them over 10 s).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters


def restart_with_returning_allocator() -> None:
    """Restart this interpreter with its small objects in malloc (PYTHONMALLOC=malloc), and malloc from jemalloc
    where it is installed (LD_PRELOAD), unless the environment chose Python's allocator already (PYTHONMALLOC set:
    then nothing changes). Only an interpreter's start chooses its allocators, hence the restart (same process, same
    arguments; the server's trainers inherit them): call it first, before anything is imported or started. Not
    POSIX: nothing to do."""
    if os.name != "posix" or "PYTHONMALLOC" in os.environ:
        return
    os.environ["PYTHONMALLOC"] = "malloc"
    library = ctypes.util.find_library(JEMALLOC)
    if library and JEMALLOC not in os.environ.get("LD_PRELOAD", ""):
        os.environ["LD_PRELOAD"] = " ".join(filter(None, (library, os.environ.get("LD_PRELOAD"))))
        os.environ.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def without_jemalloc() -> str | None:
    """The one line an operator should read when this server runs on glibc's malloc where it could run on jemalloc
    (not installed, or the environment chose otherwise), else None."""
    if _jemalloc() is not None or _glibc() is None:
        return None
    return ("memory: running on glibc's malloc, which keeps much of what visitors used after they leave; "
            "install jemalloc (Debian, Ubuntu: apt-get install libjemalloc2) and start app.py without PYTHONMALLOC "
            "set to run on it")


@cache
def _jemalloc() -> ctypes.CDLL | None:
    """This process's jemalloc, if malloc is jemalloc's."""
    process = ctypes.CDLL(None)
    return process if hasattr(process, "mallctl") else None


@cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, whose malloc is this process's unless jemalloc's is."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_malloc(arenas: int = 2, mmap_threshold: int = 5 * 2**20, trim_threshold: int = 64 * 2**20) -> None:
    """On glibc's malloc (no jemalloc installed), keep what a busy server's threads free from staying resident. A
    couple of arenas shared by all ~100 threads; every block of `mmap_threshold` bytes or more (a long prompt's
    matrices, a large batch's logits) mapped on its own and unmapped when freed, where glibc would raise that
    threshold towards 32 MB as large blocks are freed and then carve them from arenas that fragment. Smaller blocks
    come from the heap, whose free top is kept up to `trim_threshold` while the server works: oneDNN's LSTM copies
    every weight matrix at each prompt's reading (1-4 MB each on the shipped models, hence 5 MB), and mapped afresh
    they cost a reading its page faults (shakespeare-char, 60 characters: 15.5 ms and 14.2 MB faulted against
    10.2 ms and none). Call it first thing, before threads start. On jemalloc, or not glibc: nothing to do."""
    libc = _glibc()
    if libc is None or _jemalloc() is not None:
        return
    libc.mallopt(M_ARENA_MAX, arenas)
    libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)


def release_free_memory() -> None:
    """Hand the memory ended sessions freed (their models, their jobs' buffers) back to the system, at the page
    sweeps that forget pages or find the server quiet: jemalloc's and glibc's free pages, which both keep for reuse
    (so the server's resident size would never return to its idle level)."""
    jemalloc = _jemalloc()
    if jemalloc is not None:
        jemalloc.mallctl(f"arena.{ALL_ARENAS}.purge".encode(), None, None, None, ctypes.c_size_t(0))
        return
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
