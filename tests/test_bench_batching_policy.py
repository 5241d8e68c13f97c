"""`bench.batching_policy`: the rule it simulates and the lower bound it reports, on events worked by hand."""

import numpy as np
import pytest

from bench import batching_policy as bp
from mdlm.sampling_law import SamplerConfig, UnmaskEvents, batch_noise
from mdlm.schedule import load_schedule, resolve_schedule_path

# 2 rows, L 3, T 4, the final pass on: row 0 unmasks position 0 at step 0 and positions 1, 2 at step 2; row 1
# unmasks position 0 at step 1, 1 at step 3, and 2 in the final pass (step 4). Steps 0-1 run the light model
# (index 1), steps 2-3 and the final pass the heavy one (index 0).
TAU = np.array([[0, 2, 2], [1, 3, 4]])
MODEL_OF_STEP = np.array([1, 1, 0, 0, 0])


def _events():
    events = UnmaskEvents.of(TAU, steps=4, final_pass=True)
    return events, MODEL_OF_STEP[events.step]


@pytest.mark.parametrize("batch, expected", [
    # light: one event per row, two in all; heavy: row 1 has two, three in all
    (2, 1 + 2),  # light max(1, ceil(2 / 2)); heavy max(2, ceil(3 / 2))
    (1, 2 + 3),  # one row a call: every event is a call
])
def test_lower_bound_by_hand(batch, expected):
    events, models = _events()
    assert bp.lower_bound(events, models, rows=2, batch=batch) == expected


@pytest.mark.parametrize("batch, expected", [
    (2, 3),  # light {row 0 step 0, row 1 step 1}; heavy {row 0 step 2, row 1 step 3}; heavy {row 1 final}
    (1, 5),  # light row 0; light row 1 (step 1 is now earliest); heavy row 0; heavy row 1 twice
])
def test_earliest_rule_by_hand(batch, expected):
    events, models = _events()
    assert bp.earliest_rule_calls(events, models, batch) == expected


def test_model_of_group_follows_the_schedule():
    schedule = load_schedule(resolve_schedule_path("light-first"), 4)  # L25 H75 of 4 steps: step 0 light
    events, _ = _events()
    light = list(schedule.models.values()).index("light")
    assert (bp.model_of_group(schedule, events) == light).tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("name", ["all-heavy", "sandwich", "interleaved"])
def test_sampler_calls_respect_the_bound(name):
    """Any rule needs at least the bound; one model with every row in one call needs exactly it (the most
    events of a row), which the sampler reaches."""
    steps, rows, seq_len = 32, 8, 16
    schedule = load_schedule(resolve_schedule_path(name), steps)
    tau, _, _ = batch_noise(0, np.arange(rows), seq_len, steps, SamplerConfig())
    events = UnmaskEvents.of(tau, steps, True)
    models = bp.model_of_group(schedule, events)
    bound = bp.lower_bound(events, models, rows, rows)
    calls = bp.sampler_calls(schedule, rows, seq_len, seed=0, batch=rows)
    assert calls >= bound and bp.earliest_rule_calls(events, models, rows) >= bound
    if name == "all-heavy":
        assert calls == bound == int(np.bincount(events.row).max())
