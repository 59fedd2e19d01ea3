"""One hardware table (megacrystal/hardware_table.py): the planner's entries, the rehearsal's memory
capacity and the training loop's MFU peak all read it, so a figure changed there changes all three."""

from __future__ import annotations

import pytest

from megacrystal import hardware_table
from megacrystal.planner import hardware
from megacrystal.rehearsal.gpus import GPUS
from megacrystal.train import metrics


@pytest.mark.parametrize("key", hardware_table.GPU_KEYS)
def test_planner_rehearsal_and_mfu_read_the_same_entry(key, monkeypatch):
    hw = hardware.get(key)
    g = GPUS[key]
    assert hw.memory_bytes == g.capacity and hw.usable_bytes == g.usable  # one "fits" rule
    assert g.usable == int((g.capacity - 2 * 2**30) * 0.95)  # 2 GiB reserve, 5% fragmentation
    assert hw.peak_flops("bf16") == g.peak_bf16_flops
    name = "NVIDIA " + hardware_table.TABLE[key]["device_names"][0] + " (some board)"
    assert metrics.gpu_peak(name, "bf16", False)[0] == hw.peak_flops("bf16")
    # a figure changed in the table reaches all readers
    entry = dict(hardware_table.TABLE[key], peak_tflops=dict(hardware_table.TABLE[key]["peak_tflops"], bf16=1.5))
    monkeypatch.setitem(hardware_table.TABLE, key, entry)
    assert metrics.gpu_peak(name, "bf16", False)[0] == 1.5e12
    assert hardware.get(key).peak_flops("bf16") == 1.5e12


def test_device_names_match_the_most_specific_entry():
    assert hardware_table.match_device("NVIDIA A100-SXM4-80GB") == "a100"
    assert hardware_table.match_device("NVIDIA A10") == "a10"
    assert hardware_table.match_device("NVIDIA H100 PCIe") == "h100_pcie"
    assert hardware_table.match_device("NVIDIA H100 80GB HBM3") == "h100"
    assert hardware_table.match_device("NVIDIA L40S") == "l40s"
    assert hardware_table.match_device("Some GPU") is None


def test_a_user_file_may_give_memory_as_cuda_reports_it(tmp_path):
    f = tmp_path / "box.yaml"
    f.write_text("memory_gib: 10\nmemory_reserve_gib: 1\npeak_tflops: 100\nhbm_gb_s: 1000\n")
    hw = hardware.load_file(str(f))
    assert hw.memory_bytes == 10 * 2**30 and hw.usable_bytes == int(9 * 2**30 * 0.95)
