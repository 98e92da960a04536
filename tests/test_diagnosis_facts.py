"""Station facts: free disk space is read from the kernel at most every few seconds."""

from __future__ import annotations

import shutil

from agent.diagnosis import facts
from agent.diagnosis.facts import CachedDiskFree, disk_free


def test_disk_free_cached_for_ttl(tmp_path, monkeypatch):
    calls: list[str] = []
    real = shutil.disk_usage

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(facts.shutil, "disk_usage", counting)
    t = [100.0]
    cached = CachedDiskFree(tmp_path / "store" / "agent.db", ttl_s=5.0, clock=lambda: t[0])
    first = cached()
    assert first is not None and 0 <= first[0] <= 100
    t[0] += 4.9
    assert cached() == first
    assert len(calls) == 1  # within the TTL: no statvfs
    t[0] += 0.1
    cached()
    assert len(calls) == 2
    assert calls[0] == str(tmp_path)  # the nearest existing parent of the store path


def test_cached_disk_free_same_answer_as_direct(tmp_path):
    direct = disk_free(tmp_path)
    cached = CachedDiskFree(tmp_path)()
    assert direct is not None and cached is not None
    assert abs(direct[1] - cached[1]) < 100  # MB; other processes write meanwhile
