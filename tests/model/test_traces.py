"""Trace files and trace replay: formats, scaling, time compression, windows, censoring."""

from __future__ import annotations

import copy
import gzip
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from metapolicy.baselines import kube_default
from metapolicy.cluster import make_cluster
from metapolicy.evaluation import episode_stats, evaluation_seeds
from metapolicy.features import QOS_CLASSES, PodAttributes
from metapolicy.selection import selection_seeds
from metapolicy.sim import PlacementSim
from metapolicy.trace_files import (
    ALIBABA,
    GENERIC,
    InvalidTrace,
    attributes_of,
    from_tasks,
    parse_trace,
    read_trace,
    write_generic,
)
from metapolicy.traces import KaplanMeier, TraceTasks

FIXTURES = Path(__file__).parent / "fixtures"


def synthetic_trace(n: int = 400, seed: int = 0, censored_share: float = 0.0):
    """A trace with bursty arrivals, two QoS classes with different run times, some censored."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(10.0, n) * np.where(rng.random(n) < 0.2, 0.1, 1.0)
    guaranteed = rng.random(n) < 0.5
    duration = np.where(guaranteed, rng.exponential(600, n), rng.exponential(60, n)) + 1
    attributes = [PodAttributes(qos="Guaranteed" if g else "BestEffort") for g in guaranteed]
    return from_tasks(
        arrival=np.cumsum(gaps),
        cpu=rng.choice([1.0, 2.0, 4.0, 8.0], n),
        memory=rng.choice([1024.0, 4096.0, 16384.0], n),
        duration=duration,
        attributes=attributes,
        censored=rng.random(n) < censored_share,
    )


# ----- formats ----------------------------------------------------------------------------------
def test_alibaba_pod_list_as_published():
    trace = read_trace(FIXTURES / "alibaba_pod_list.csv")
    assert trace.info["format"] == ALIBABA
    # two pods never scheduled (Pending, and one with no times at all) are left out, counted
    assert len(trace) == 6 and trace.info["never_scheduled"] == 2
    np.testing.assert_array_equal(trace.arrival, [0, 100, 200, 300, 500, 600])
    np.testing.assert_allclose(trace.cpu, [12, 6, 3.152, 8, 4, 11.3])
    # run time = deletion - scheduled, not deletion - creation
    np.testing.assert_allclose(trace.duration, [9000, 4898, 210, 3600, 8480, 200])
    # Running at the trace's last timestamp: censored; Running but deleted earlier: complete
    np.testing.assert_array_equal(trace.censored, [True, False, False, False, True, False])
    qos = [QOS_CLASSES[q] for q in trace.qos]
    assert qos == [
        "Guaranteed",
        "Guaranteed",
        "BestEffort",
        "Burstable",
        "BestEffort",
        "Guaranteed",
    ]
    gpus = [attributes_of(v).gpu for v in trace.attributes]
    assert gpus == [1.0, 0.46, 1.0, 2.0, 0.0, 0.5]


def test_generic_csv_with_optional_columns_and_comments():
    trace = read_trace(FIXTURES / "generic.csv")
    assert trace.info["format"] == GENERIC
    np.testing.assert_array_equal(trace.arrival, [0, 1.0, 2.5, 7])  # sorted by arrival
    first, plain, hinted, stateful = (attributes_of(v) for v in trace.attributes)
    assert (first.qos, first.owner, first.priority) == ("Guaranteed", "service", 1000)
    assert (plain.qos, plain.owner, plain.gpu, plain.duration_hint_s) == (
        "Burstable", "other", 0.0, None,
    )  # fmt: skip
    assert (hinted.owner, hinted.gpu, hinted.duration_hint_s) == ("batch", 1.0, 900.0)
    assert stateful.owner == "stateful"
    np.testing.assert_array_equal(trace.censored, [False, False, False, True])


def test_generic_round_trip_and_gzip(tmp_path):
    original = synthetic_trace(50, censored_share=0.2)
    path = tmp_path / "t.csv"
    write_generic(original, path)
    again = read_trace(path)
    np.testing.assert_allclose(again.arrival, original.arrival, atol=1e-3)
    np.testing.assert_array_equal(again.qos, original.qos)
    np.testing.assert_array_equal(again.censored, original.censored)
    zipped = tmp_path / "t.csv.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(read_trace(zipped).cpu, again.cpu)
    write_generic(original, path, attributes=False)
    bare = read_trace(path)
    assert set(bare.qos) == {QOS_CLASSES.index("Burstable")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,c\n1,2,3\n", "unknown trace format"),
        ("", "empty file"),
        ("arrival_s,cpu_cores,memory_mib,duration_s\n0,x,1,1\n", "line 2: cpu_cores='x'"),
        ("arrival_s,cpu_cores,memory_mib,duration_s\n0,1,1,-4\n", "duration_s='-4'"),
        ("arrival_s,cpu_cores,memory_mib,duration_s,qos\n0,1,1,1,Gold\n", "qos 'Gold'"),
        ("arrival_s,cpu_cores,memory_mib,duration_s\n", "no usable tasks"),
    ],
)
def test_bad_trace_files_name_the_problem(text, message):
    with pytest.raises(InvalidTrace, match=message):
        parse_trace(text.encode(), name="t.csv")


def test_explicit_format_must_match_the_columns():
    raw = (FIXTURES / "generic.csv").read_bytes()
    with pytest.raises(InvalidTrace, match="missing column"):
        parse_trace(raw, ALIBABA)
    with pytest.raises(InvalidTrace, match="unknown trace format 'parquet'"):
        parse_trace(raw, "parquet")


def test_unreadable_file(tmp_path):
    with pytest.raises(InvalidTrace, match="cannot read trace"):
        read_trace(tmp_path / "missing.csv")


# ----- replay -----------------------------------------------------------------------------------
def test_validation_and_selection_windows_are_disjoint_and_in_time_order():
    source = TraceTasks(synthetic_trace(400), episode_tasks=64)
    boundary = source.boundary
    validation = {source.window_start(s) for s in evaluation_seeds(64)}
    selection = {source.window_start(s) for s in selection_seeds(16)}
    training = {source.window_start(s) for s in range(200)}
    assert min(validation) >= boundary
    assert max(validation) + 64 <= 400
    assert max(selection | training) + 64 <= boundary
    # 64 episodes spread over every window of the validation part, not a few repeated ones
    assert len(validation) == 400 - 64 - boundary + 1


def test_short_traces_get_shorter_episodes():
    source = TraceTasks(synthetic_trace(100), episode_tasks=256)
    assert source.episode_tasks == 25
    with pytest.raises(InvalidTrace, match="too few"):
        TraceTasks(synthetic_trace(40), episode_tasks=256)


def test_sizes_fit_the_biggest_node_and_load_is_met():
    trace = synthetic_trace(400)
    source = TraceTasks(trace, episode_tasks=64, load=0.6)
    nodes = make_cluster(8)
    capacity = sum(n.cpu for n in nodes)
    fit = source.scale(capacity, (16.0, 65536.0))
    assert fit.cpu * np.quantile(trace.cpu, 0.99) == pytest.approx(16.0)
    assert fit.memory * np.quantile(trace.memory, 0.99) == pytest.approx(65536.0)
    heavier = TraceTasks(trace, episode_tasks=64, load=1.2).scale(capacity, (16.0, 65536.0))
    assert heavier.compression > fit.compression  # more load: gaps compressed more
    # the requested load, measured as the mean requested cpu if every task were placed
    batch = source.draw(list(range(64)), capacity, (16.0, 65536.0))
    end = batch.arrival[:, -1:]
    held = (batch.cpu * np.minimum(batch.duration, end - batch.arrival)).sum(-1)
    assert (held / (capacity * end[:, 0])).mean() == pytest.approx(0.6, rel=0.25)


def test_replay_keeps_the_trace_gaps_and_run_times():
    trace = synthetic_trace(400)
    source = TraceTasks(trace, episode_tasks=64)
    fit = source.scale(84.0, (16.0, 65536.0))
    seed = 10_003
    start = source.window_start(seed)
    batch = source.draw([seed], 84.0, (16.0, 65536.0))
    window = slice(start, start + 64)
    np.testing.assert_allclose(
        np.diff(batch.arrival[0]) * fit.compression, np.diff(trace.arrival[window])
    )
    np.testing.assert_allclose(batch.duration[0], trace.duration[window])
    np.testing.assert_array_equal(batch.attributes[0], trace.attributes[window])


def test_real_time_replay_without_scaling():
    trace = synthetic_trace(400)
    source = TraceTasks(trace, episode_tasks=64, load=None, scale_sizes=False)
    batch = source.draw([5], 84.0, (16.0, 65536.0))
    start = source.window_start(5)
    np.testing.assert_allclose(batch.cpu[0], trace.cpu[start : start + 64])
    np.testing.assert_allclose(
        batch.arrival[0], trace.arrival[start : start + 64] - trace.arrival[start]
    )


def test_censored_run_times_are_drawn_beyond_their_age_and_repeat_per_seed():
    trace = synthetic_trace(400, censored_share=0.3)
    source = TraceTasks(trace, episode_tasks=64)
    seeds = list(range(30))
    a = source.draw(seeds, 84.0, (16.0, 65536.0))
    b = source.draw(seeds, 84.0, (16.0, 65536.0))
    np.testing.assert_array_equal(a.duration, b.duration)  # common random numbers
    starts = [source.window_start(s) for s in seeds]
    age = np.stack([trace.duration[s : s + 64] for s in starts])
    censored = np.stack([trace.censored[s : s + 64] for s in starts])
    assert censored.sum() > 100
    assert (a.duration[censored] >= age[censored]).all()
    assert (a.duration[censored] > age[censored]).mean() > 0.5
    np.testing.assert_array_equal(a.duration[~censored], age[~censored])


def test_kaplan_meier_matches_the_empirical_law_without_censoring():
    durations = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    km = KaplanMeier(durations, np.zeros(5, bool))
    np.testing.assert_allclose(km.survival(np.array([0.5, 1, 2, 3.5, 4])), [1, 0.8, 0.4, 0.2, 0])
    # given age 2.5, only 3 and 4 remain, equally likely
    draws = km.conditional(np.full(1000, 2.5), np.random.default_rng(0).random(1000))
    assert set(draws) == {3.0, 4.0}
    assert 0.4 < (draws == 3.0).mean() < 0.6


def test_kaplan_meier_beyond_the_longest_completion_is_infinite():
    km = KaplanMeier(np.array([1.0, 2.0, 10.0]), np.array([False, False, True]))
    assert km.survival(np.array([5.0]))[0] == pytest.approx(1 / 3)
    assert np.isinf(km.conditional(np.array([5.0]), np.array([0.5]))[0])


def test_trace_source_goes_to_a_worker_process_and_back_and_runs_in_the_simulator():
    source = TraceTasks(synthetic_trace(400, censored_share=0.1), episode_tasks=64)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        clone = pool.submit(copy.copy, source).result()  # to a worker process and back
    nodes = make_cluster(6)
    seeds = evaluation_seeds(4)
    a = episode_stats(kube_default, nodes, source, seeds)
    b = episode_stats(kube_default, nodes, clone, seeds)
    np.testing.assert_array_equal(a.returns, b.returns)
    assert PlacementSim(nodes, clone).episode_tasks == 64
    assert (a.cost_ms > 0).all() and ((a.reject_rate >= 0) & (a.reject_rate <= 1)).all()
