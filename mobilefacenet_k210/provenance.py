"""Where and when a figure was measured: every report states the machine and the time it ran on."""
import os
import platform
import re
import time
from pathlib import Path


def machine() -> str:
    """CPU model and core count (all figures depend on it)."""
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def timestamp() -> str:
    """Now, in UTC, as the reports write it."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
