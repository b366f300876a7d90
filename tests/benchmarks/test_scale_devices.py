"""The scale benchmark's side-by-side device measurement runs on whatever device torch sees (the
CPU in CI) and its table says when a GPU column is missing."""

import argparse

import torch

from benchmarks.scale import default_devices, device_costs, device_table


def test_the_same_work_is_timed_on_each_device_and_tabled():
    args = argparse.Namespace(seed=0, budget=None, device_steps=1024)
    rows = [device_costs(6, device, args) for device in default_devices()]
    assert [r["device"] for r in rows] == (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    )
    for row in rows:
        assert row["steps"] == 1024 and row["training_seconds"] > 0 and row["fine_tune_seconds"] > 0
    text = "\n".join(device_table(rows))
    assert "| cpu |" in text
    assert ("No GPU here" in text) == (len(rows) == 1)
