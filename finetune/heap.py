"""The C heap during training: memory a step frees stays in the process for the next step.

A training step allocates its activations and gradients, frees them all at the end of backward,
and allocates the same sizes again at the next step. glibc's malloc hands freed memory at the top
of its heap back to the kernel once it exceeds a trim threshold, and serves blocks above an mmap
threshold with mmap/munmap; both thresholds adapt at run time to the sizes freed so far. Which
side of them a step's tensors fall on depends on the heap's history, so the same step either
reuses its memory or pays a page fault for every 4 KiB it touches, every step. Measured on
`finetune.fit` (benchmarks/train_throughput.py --only overhead, 2 CPU cores): resnet18 at 128 px
with `--freeze-until layer3` took 12 thousand page faults and 20-50 ms of system CPU time (both
threads) a 0.25 s step, resnet50 at 224 px up to 75 thousand; with the settings here, 1.
PyTorch's CPU allocator is malloc (it has no caching allocator as CUDA does), and an LD_PRELOADed
jemalloc or tcmalloc cannot be chosen from inside a running process, so the settings are made with
mallopt(3), written here because no library we use exposes them.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
from collections.abc import Iterator

# mallopt(3) parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
GLIBC_MMAP_MAX = 65536  # malloc.h DEFAULT_MMAP_MAX: how many blocks may have their own mapping
# After training. Setting any threshold turns glibc's adaptation off for the rest of the process, so what
# follows training (a prediction in the same notebook) gets the values the adaptation reaches after
# freeing large blocks: its largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, 4 MiB *
# sizeof(long)) and the trim threshold it pairs with it (twice that).
ADAPTED_MMAP_THRESHOLD = 32 * 1024 * 1024
ADAPTED_TRIM_THRESHOLD = 2 * ADAPTED_MMAP_THRESHOLD
# The user's own choice of these settings, which is left alone (mallopt(3), glibc tunables).
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")
USER_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold", "glibc.malloc.mmap_max",
                 "glibc.malloc.top_pad")

_lock = threading.Lock()
_depth = 0  # nested users (a range test inside fit, fits inside a search) restore once, at the outermost


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None on another C library (musl, macOS, Windows), where this does nothing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _user_chose() -> bool:
    """True when the environment sets glibc's heap thresholds itself: that choice wins."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in USER_SETTINGS) or any(t in tunables for t in USER_TUNABLES)


def keeping() -> bool:
    """True inside keep_freed_memory where it applies: the process is keeping what it frees."""
    return _depth > 0


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside: blocks come from the heap instead of mappings of their own, which free would unmap, and
    the heap is never trimmed, so a training step touches memory the process already has. (A thread's
    block above its 64 MiB arena still gets a mapping: glibc falls back to one.) On leaving: the memory
    kept is handed back to the kernel (malloc_trim); blocks of 32 MiB and more are mapped again, and the
    heap trims again above 64 MiB free.

    Yields:
        True when the settings apply; False on another C library or where the environment sets glibc's
        thresholds itself (MALLOC_TRIM_THRESHOLD_ and the like, GLIBC_TUNABLES).
    """
    global _depth
    libc = _glibc()
    if libc is None or _user_chose():
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            # Blocks above 32 MiB too: resnet50's first activations at 224 px, batch 32, are 49 MiB in bf16.
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, -1)  # -1: never trim (mallopt(3))
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _hand_back(libc)


def _hand_back(libc: ctypes.CDLL) -> None:
    libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
    libc.mallopt(M_MMAP_THRESHOLD, ADAPTED_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, ADAPTED_TRIM_THRESHOLD)
    libc.malloc_trim(0)


def release_in_child() -> None:
    """In a process forked from inside keep_freed_memory (a DataLoader worker): back to the settings
    after training, so that each worker does not hold its own peak (a large decoded image) for good.
    No lock: a forked child has one thread, and a lock held by another thread at the fork stays held."""
    global _depth
    libc = _glibc()
    if libc is not None and _depth > 0:
        _depth = 0
        _hand_back(libc)
