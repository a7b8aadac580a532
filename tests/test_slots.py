"""GPU slot logic against fake device lists, port choice and the exact accelerate command line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sweepdae.errors import SweepdaeError
from sweepdae.runner.coordinator import _halve_micro_batch
from sweepdae.runner.launch import accelerate_command
from sweepdae.runner.slots import Slot, cell_env, free_port, make_slots, parse_gpus


def test_one_cell_per_gpu() -> None:
    slots = make_slots([0, 1, 2, 3])
    assert [s.gpus for s in slots] == [(0,), (1,), (2,), (3,)]
    assert [s.index for s in slots] == [0, 1, 2, 3]


def test_k_gpus_per_cell_disjoint_groups() -> None:
    assert [s.gpus for s in make_slots([0, 1, 2, 3], gpus_per_cell=2)] == [(0, 1), (2, 3)]
    # a leftover GPU that cannot form a full group stays idle
    assert [s.gpus for s in make_slots([0, 1, 2], gpus_per_cell=2)] == [(0, 1)]
    with pytest.raises(SweepdaeError, match="only 2 GPU"):
        make_slots([0, 1], gpus_per_cell=4)


def test_n_cells_packed_per_gpu() -> None:
    slots = make_slots([3, 5], cells_per_gpu=3)
    assert [s.gpus for s in slots] == [(3,)] * 3 + [(5,)] * 3
    assert len({s.index for s in slots}) == 6
    with pytest.raises(SweepdaeError, match="cannot be combined"):
        make_slots([0, 1], gpus_per_cell=2, cells_per_gpu=2)


def test_cpu_slots() -> None:
    assert [s.gpus for s in make_slots([])] == [()]
    assert len(make_slots([], cpu_cells=2)) == 2
    assert make_slots([])[0].label == "cpu"


def test_parse_gpus() -> None:
    assert parse_gpus("auto", [0, 1]) == [0, 1]
    assert parse_gpus("cpu", [0, 1]) == []
    assert parse_gpus("1, 0", [0, 1]) == [1, 0]
    for bad, msg in (("x", "comma-separated"), ("0,0", "distinct"), ("7", "no GPU 7")):
        with pytest.raises(SweepdaeError, match=msg):
            parse_gpus(bad, [0, 1])


def test_free_port_binds_and_avoids_taken() -> None:
    p = free_port()
    with socket.socket() as s:
        s.bind(("", p))  # really free
    q = free_port({p})
    assert q != p


def test_cell_env_pins_devices() -> None:
    assert cell_env(Slot(0, (2, 3)), {})["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert cell_env(Slot(0, ()), {})["CUDA_VISIBLE_DEVICES"] == ""


def test_accelerate_command_line() -> None:
    cmd = accelerate_command(Path("runs/abc"), Slot(0, (0, 1)), 29555)
    i = cmd.index("--num_processes")
    assert cmd[i + 1] == "2" and "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[cmd.index("--main_process_port") + 1] == "29555"
    assert cmd[-3:] == ["-m", "sweepdae.cell", "runs/abc"]
    cpu = accelerate_command(Path("r"), Slot(0, ()), 1234)
    assert "--cpu" in cpu and cpu[cpu.index("--num_processes") + 1] == "1" and "--multi_gpu" not in cpu
    one = accelerate_command(Path("r"), Slot(0, (4,)), 1234)
    assert "--multi_gpu" not in one and "--cpu" not in one


def test_oom_retry_halves_micro_batch() -> None:
    assert _halve_micro_batch({"train": {"batch_size": 256, "micro_batch_size": 0}}) == {
        "train": {"micro_batch_size": 128}}
    assert _halve_micro_batch({"train": {"batch_size": 256, "micro_batch_size": 128}}) == {
        "train": {"micro_batch_size": 64}}
    assert _halve_micro_batch({"train": {"batch_size": 1, "micro_batch_size": 0}}) is None
