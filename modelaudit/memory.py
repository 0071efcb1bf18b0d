"""The scan's peak memory, for the report (``ScanInfo.peak_memory_bytes``), read without importing torch.

Why the kernel's high-water mark: a scan's peak is what decides whether it fits a machine, and it is reached
inside library calls (a batch's logits, a model load) that no sampling between stages would see. On Linux it is
``VmHWM`` of ``/proc/self/status`` (this process image's peak; ``ru_maxrss`` would also count a parent's peak
from before ``exec``), elsewhere ``ru_maxrss``. GPU memory is torch's own peak, read only when torch is already
loaded and CUDA was used, so a static-only scan imports nothing heavy.
"""

from __future__ import annotations

import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far, in bytes; None where the platform does not say."""
    try:
        for line in STATUS.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes; Linux, BSD: KiB


def peak_gpu_bytes() -> int | None:
    """Peak CUDA memory torch allocated in this process, summed over its GPUs, in bytes; None when torch was
    not imported or never used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return sum(int(torch.cuda.max_memory_allocated(i)) for i in range(torch.cuda.device_count()))
