"""Watching a running operator from outside: /metrics latency from a forked scraper, and CPU
and memory of the operator, its worker processes and the emulator from /proc. Used by the
storm benchmark; kept apart so a reader of the storm sees the scenario, not the sampling."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any


def _scrape_loop(url: str, interval: float, stop, conn) -> None:
    samples = []
    due = time.monotonic()
    while not stop.is_set():
        began = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
            ok = True
        except OSError:
            ok = False
        samples.append((began, time.monotonic() - began, ok))
        due += interval
        stop.wait(max(0.0, due - time.monotonic()))
    conn.send(samples)


class Scraper:
    """/metrics every `interval` s from a forked process (started before any thread here)."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        context = multiprocessing.get_context("fork")
        self.stop = context.Event()
        self.receive, send = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_scrape_loop, args=(url, interval, self.stop, send), daemon=True
        )
        self.process.start()

    def finish(self) -> list[tuple[float, float, bool]]:
        self.stop.set()
        samples = self.receive.recv()
        self.process.join(timeout=10)
        return samples


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime in seconds) from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return ""


class ProcSampler(threading.Thread):
    """CPU and RSS of the operator, its descendants (workers) and the emulator, from /proc.

    CPU per pid is the largest utime+stime seen, so a worker that exited still counts; a
    window's CPU is the sum over pids of (value at its end - value at its start)."""

    def __init__(self, roots: dict[str, int], interval: float = 0.2) -> None:
        super().__init__(name="proc-sampler", daemon=True)
        self.roots, self.interval = roots, interval
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.cmd: dict[int, str] = {}
        self.peak_rss: dict[int, int] = {}
        self.hwm: dict[int, int] = {}
        self.peak_workers_total = 0
        self.marks: dict[str, dict[int, float]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(int(entry))) is not None:
                parents[int(entry)] = stat
        roles = {pid: role for role, pid in self.roots.items() if pid in parents}
        frontier = [pid for pid, role in roles.items() if role == "operator"]
        while frontier:  # descendants of the operator: its worker processes
            children = [p for p, (ppid, _) in parents.items() if ppid in frontier]
            roles.update({p: "worker" for p in children})
            frontier = children
        workers_total = 0
        for pid, role in roles.items():
            self.role[pid] = role
            self.cmd.setdefault(pid, _cmdline(pid))
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), parents[pid][1])
            memory = _memory_kib(pid)
            self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), memory.get("VmRSS", 0))
            self.hwm[pid] = max(self.hwm.get(pid, 0), memory.get("VmHWM", 0))
            workers_total += memory.get("VmRSS", 0) if role == "worker" else 0
        self.peak_workers_total = max(self.peak_workers_total, workers_total)

    def mark(self, label: str) -> None:
        self.sample()
        self.marks[label] = dict(self.cpu)

    def window(self, start: str, end: str) -> dict[str, float]:
        a, b = self.marks[start], self.marks[end]
        out: dict[str, float] = {}
        for pid, value in b.items():
            role = self.role[pid]
            out[role] = out.get(role, 0.0) + value - a.get(pid, 0.0)
        return out

    def report(self) -> dict[str, Any]:
        def pick(role: str) -> list[int]:
            return [pid for pid, r in self.role.items() if r == role]

        def mib(kib: int) -> float:
            return kib / 1024

        operator, workers = pick("operator"), pick("worker")
        return {
            "operator_peak_rss_mib": mib(max(self.peak_rss[p] for p in operator)),
            "operator_vmhwm_mib": mib(max(self.hwm[p] for p in operator)),
            "worker_peak_rss_mib": mib(max((self.peak_rss[p] for p in workers), default=0)),
            "worker_vmhwm_mib": mib(max((self.hwm[p] for p in workers), default=0)),
            "workers_total_peak_rss_mib": mib(self.peak_workers_total),
            "cpu_total_s": {r: sum(self.cpu[p] for p in pick(r)) for r in set(self.role.values())},
            "processes": [self.process(p) for p in sorted(self.role)],
        }

    def process(self, pid: int) -> dict[str, Any]:
        return {
            "pid": pid,
            "role": self.role[pid],
            "cmd": self.cmd[pid],
            "cpu_s": self.cpu[pid],
            "peak_rss_mib": self.peak_rss[pid] / 1024,
            "vmhwm_mib": self.hwm[pid] / 1024,
        }
