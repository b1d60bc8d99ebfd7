"""Where and when a figure was measured: every report states the machine and the time it ran on."""
import os
import platform
import re
import time
from pathlib import Path


def machine() -> str:
    """CPU model and core count (all figures depend on it), and oneDNN's instruction-set cap when one is set."""
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{cpu}, {os.cpu_count()} cores" + (f", oneDNN capped at {cap}" if cap else "")


def timestamp() -> str:
    """Now, in UTC, as the reports write it."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
