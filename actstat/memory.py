"""Host memory: how many bytes a run may still allocate, on any OS and inside a container.

psutil's `available` is what the operating system could hand out without swapping (Linux's
MemAvailable, macOS's free + inactive pages, Windows' available physical memory). A container
sees the host's memory there, not its own limit: the kernel kills the process at the cgroup's
limit however much the host has free, so the cgroup's room counts too and the smaller one wins.

The cgroup's room is its limit minus its usage, where usage leaves out inactive file pages (page
cache the kernel reclaims before it kills anything; the same working set as Docker's `docker
stats` and the kubelet's eviction use). Both hierarchies are read: cgroup v2's `memory.max` and
`memory.current`, cgroup v1's `memory/memory.limit_in_bytes` and `memory.usage_in_bytes`, at the
root of the mount (a container's own cgroup) and along the process's own cgroup path from
/proc/self/cgroup (a systemd slice or a nested group on a host), every level that sets a limit.

Imports nothing heavy: psutil is a small C extension.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

# cgroup v1 writes "no limit" as the largest page-aligned int64 (9223372036854771712); anything
# from 2**62 bytes (4 EiB) up is taken as no limit
NO_LIMIT = 1 << 62


def available_memory(cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> int | None:
    """Bytes this process may still allocate: the smaller of the system's available memory and
    every enclosing cgroup's room; None if neither is known. (The paths: CGROUP_ROOT and
    PROC_CGROUP unless given, for tests.)"""
    rooms = _cgroup_rooms(cgroup_root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP)
    candidates = [room for room in rooms if room is not None]
    system = _system_available()
    if system is not None:
        candidates.append(system)
    return max(0, min(candidates)) if candidates else None


def _system_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil has no support for this platform, or /proc is not mounted
        return None


def _cgroup_rooms(root: Path, proc_cgroup: Path) -> Iterator[int | None]:
    v2_path, v1_path = _own_paths(proc_cgroup)
    for directory in _levels(root, v2_path):
        yield _room(directory / "memory.max", directory / "memory.current",
                    directory / "memory.stat", "inactive_file")
    for directory in _levels(root / "memory", v1_path):
        yield _room(directory / "memory.limit_in_bytes", directory / "memory.usage_in_bytes",
                    directory / "memory.stat", "total_inactive_file")


def _own_paths(proc_cgroup: Path) -> tuple[str, str]:
    """This process's cgroup path in the v2 hierarchy and in v1's memory controller ("/": none)."""
    v2, v1 = "/", "/"
    try:
        lines = proc_cgroup.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return v2, v1
    for line in lines:  # "hierarchy-id:controllers:path"
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2] or "/"
        elif "memory" in parts[1].split(","):
            v1 = parts[2] or "/"
    return v2, v1


def _levels(mount: Path, own: str) -> list[Path]:
    """The mount's root and every directory down to the process's own cgroup that exists."""
    levels = [mount]
    for part in [p for p in own.split("/") if p and p not in (".", "..")]:
        levels.append(levels[-1] / part)
    return [level for level in levels if level.is_dir()]


def _room(limit_file: Path, usage_file: Path, stat_file: Path, inactive_key: str) -> int | None:
    """limit - (usage - inactive file pages), or None where the level sets no limit."""
    try:
        limit_text = limit_file.read_text(encoding="ascii").strip()
        if limit_text == "max":
            return None
        limit = int(limit_text)
        usage = int(usage_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if limit >= NO_LIMIT:
        return None
    return limit - max(0, usage - _stat(stat_file, inactive_key))


def _stat(stat_file: Path, key: str) -> int:
    try:
        for line in stat_file.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0
