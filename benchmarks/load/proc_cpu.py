"""CPU time of a process tree from Linux ``/proc``, split into main and other threads.

The middleware's background thread shares the GIL with the request-serving main thread, so
the split shows what the background work costs per record, apart from the request path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TreeCPU:
    main_s: float
    other_s: float

    def __sub__(self, before: TreeCPU) -> TreeCPU:
        return TreeCPU(self.main_s - before.main_s, self.other_s - before.other_s)


def _fields(stat: Path) -> list[str]:
    # The command name may hold spaces and parentheses: fields resume after the last ')'.
    return stat.read_text().rsplit(")", 1)[1].split()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_fields(entry / "stat")[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue  # exited meanwhile
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def tree_cpu(root: int) -> TreeCPU:
    """User + system seconds of every thread of ``root`` and its descendants."""
    main = other = 0.0
    for pid in _tree(root):
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                f = _fields(task / "stat")
            except OSError:
                continue
            seconds = (int(f[11]) + int(f[12])) / _TICK
            if int(task.name) == pid:
                main += seconds
            else:
                other += seconds
    return TreeCPU(main, other)


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK
