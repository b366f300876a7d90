"""The arrival log behind the arrival-pressure feature."""

import numpy as np

from metapolicy.features import PRESSURE_WINDOW
from metapolicy_operator.serving.arrivals import ArrivalLog


def test_the_window_ends_with_the_pod_and_holds_only_earlier_arrivals():
    log = ArrivalLog()
    for t, uid in [(3.0, "c"), (1.0, "a"), (2.0, "b"), (9.0, "later")]:
        log.add(t, uid)
    window = log.window(5.0, "p")
    assert np.isnan(window[:-4]).all()
    assert window[-4:].tolist() == [1.0, 2.0, 3.0, 5.0]


def test_the_pod_itself_is_counted_once_and_repeats_are_ignored():
    log = ArrivalLog()
    log.add(1.0, "a")
    log.add(1.0, "a")
    log.add(2.0, "p")
    assert len(log) == 2
    assert log.window(2.0, "p")[-2:].tolist() == [1.0, 2.0]


def test_the_log_is_bounded_and_keeps_the_newest():
    log = ArrivalLog(capacity=PRESSURE_WINDOW)
    for i in range(3 * PRESSURE_WINDOW):
        log.add(float(i), str(i))
    log.add(-1.0, "ancient")  # older than everything kept: dropped
    assert len(log) == PRESSURE_WINDOW
    window = log.window(1e9, "p")
    assert window[0] == 2 * PRESSURE_WINDOW + 1 and window[-1] == 1e9
