"""The perf suite's shared measuring tools."""
import os
import time

from benchmarks.perf.common import CpuMeter, summary


def test_cpu_meter_counts_busy_time_over_its_blocks_only():
    meter = CpuMeter()
    with meter:
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:  # one busy core
            pass
    time.sleep(0.3)  # outside any block: not counted
    with meter:
        time.sleep(0.1)
    assert 0.35 < meter.wall_s < 0.5
    assert meter.busy_s >= 0.25  # at least this process's spinning
    assert 0.5 < meter.cores <= os.cpu_count() + 0.05


def test_summary_is_median_min_max():
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
