"""Facts about the machine and the checkout that every result row carries."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def logical_cpus() -> int:
    return os.cpu_count() or 1


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return logical_cpus()


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None if not listed."""
    cores = set()
    phys = core = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
    except OSError:
        return None
    return len(cores) or None


def git_commit() -> str:
    """``git rev-parse HEAD`` (plus ``-dirty`` if src/ differs from it); '' without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return ""
        commit = head.stdout.strip()
        # --no-optional-locks: never take the index lock (someone may be committing).
        diff = subprocess.run(["git", "--no-optional-locks", "diff", "--quiet", "HEAD", "--",
                               "src"], cwd=REPO_ROOT, capture_output=True, timeout=10)
        if diff.returncode == 1:
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return ""


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return (float("nan"),) * 3


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().strip()
    except OSError:
        return ""


def machine_info() -> dict:
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": logical_cpus(),
        "physical_cores": physical_cores(),
        "usable_cpus": usable_cpus(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "git_commit": git_commit(),
        "thp": thp_mode(),
    }
