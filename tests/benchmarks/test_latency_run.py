"""The latency benchmark's unit of work still runs against the library's API: `make bench`
stops at the first benchmark that fails, and none of them runs in the test suite otherwise."""

from benchmarks.latency import STAGE_ORDER, WRITE, run_one, summarise


def test_one_resize_is_timed_stage_by_stage_with_its_time_to_serve():
    runs = [run_one("node-set", 4, 16, repeat, seed=repeat, budget=1024) for repeat in (0, 1)]
    assert [r["delta"] for r in runs] == [1, -1]
    for run in runs:
        assert {"resize", "zero_shot_validate", "fine_tune", "validate", WRITE} <= run[
            "stages"
        ].keys()
        assert set(run["stages"]) - {WRITE} <= set(STAGE_ORDER)
        assert 0 < run["serve"] < run["total"]
        assert run["serve"] >= run["stages"]["resize"] + run["stages"]["zero_shot_validate"]
    (row,) = summarise(runs)
    assert row["repeats"] == 2 and row["serve"]["p50"] <= row["total"]["p50"]
