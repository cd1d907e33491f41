"""Host (CPU) memory of this process and this machine: resident set, peak, what is available, and
the one allocator setting that makes the resident set follow what training really holds.

Linux only where it reads /proc; elsewhere the readers return None and callers say so. torch loads
only in the child that measures a training process's baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
from pathlib import Path

HEAP_MMAP_THRESHOLD = 1 << 20
"""Allocations of at least this many bytes get their own mapping, returned to the system when freed."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def _status_kib(field: str, path: Path = Path("/proc/self/status")) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """This process's resident set now (VmRSS), or None where /proc is missing."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """This process's own peak resident set (VmHWM; ru_maxrss would also carry a launching
    parent's peak across exec)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def mem_available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo: what can be allocated without swapping, or None."""
    kib = _status_kib("MemAvailable", Path("/proc/meminfo"))
    return None if kib is None else kib * 1024


def release_freed_activations() -> bool:
    """Make glibc hand large freed blocks back to the system at once (a fixed mmap threshold of
    HEAP_MMAP_THRESHOLD instead of its default sliding one).

    With the sliding threshold, the first freed activation raises it to that activation's size; from
    then on activations come from the heap, which keeps freed memory: on CPU the resident set of a
    musicgen-small training step grows to about twice what the step holds (benchmarks/memory_estimate.py).
    Returns whether the setting was applied (not on other C libraries, nor when the user set
    MALLOC_MMAP_THRESHOLD_ themselves)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))
    return False


# ---------------------------------------------------------------------------------------------
# The process baseline (CPU)


def measure_process_baseline() -> int | None:
    """Resident set (bytes) of a fresh training process before its model: Python, torch and the
    training stack imported, and the runtime one training step pages in (libraries' code, thread
    pools, kernel caches), measured after one step of the tiny model (its own few MB included).
    Runs in a child process (seconds), so this process's state does not count; None if it fails."""
    code = f"from {__name__} import _baseline_child; _baseline_child()"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _baseline_child() -> None:
    import torch

    import musicgen_lora.training.loop  # noqa: F401  (everything a training process imports)
    from musicgen_lora.modeling import model as model_lib
    from musicgen_lora.modeling.collate import codebook_delays, delay_pattern_labels
    from musicgen_lora.modeling.forward import forward_loss

    release_freed_activations()
    model = model_lib.apply_lora(model_lib.build_tiny_musicgen(), r=16, alpha=16, dropout=0.05, targets=("q_proj",))
    model.train()
    codes = torch.zeros(1, 4, 10, dtype=torch.long)
    ids, labels = delay_pattern_labels(codes, torch.ones(1, 10, dtype=torch.bool), codebook_delays(4), 2048)
    text = model_lib.tiny_tokenizer()(["a drum loop"], return_tensors="pt")
    batch = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
             "condition_mask": torch.ones(1, dtype=torch.long), "decoder_input_ids": ids, "labels": labels}
    loss, _ = forward_loss(model, batch)
    loss.backward()
    del loss
    print(rss_bytes())
