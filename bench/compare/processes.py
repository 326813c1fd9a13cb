"""CPU time and memory of a server that may be one process (ws2sip) or a tree (Kamailio forks
its TCP workers, timers and main TCP process off one creator).

Memory is PSS (proportional set size, /proc/<pid>/smaps_rollup): Kamailio keeps connections
in shared memory that several of its processes touch, so summing RSS would count those pages
once per process; PSS splits each shared page among its users, and for one process it is RSS
less its share of shared libraries. Machine load comes from /proc/loadavg and /proc/stat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    children_of: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children_of.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children_of.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system time the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
        else:
            raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")
    return total


@dataclass(frozen=True)
class MachineSample:
    busy_ticks: int
    total_ticks: int
    load_average: str

    @classmethod
    def now(cls) -> MachineSample:
        cpu_row = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(value) for value in cpu_row]
        idle = ticks[3] + ticks[4]  # idle + iowait
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return cls(sum(ticks) - idle, sum(ticks), load)

    def busy_cores_since(self, earlier: MachineSample) -> float:
        """Cores busy on average between the samples, whatever process used them."""
        total = self.total_ticks - earlier.total_ticks
        return (self.busy_ticks - earlier.busy_ticks) / total * os.cpu_count() if total else 0.0
