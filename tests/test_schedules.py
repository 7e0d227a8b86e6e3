"""Learning-rate schedules: each formula against its definition, warm-up, plateau's stop, settings round-trip."""

import math

import pytest

from gpubp.errors import GpubpError
from gpubp.schedules import PLATEAU_STOP, SCHEDULES, Schedule, make_schedule

BASE = 0.37


@pytest.mark.parametrize("name", SCHEDULES)
def test_warmup_ramps_linearly_to_the_base_eta(name):
    s = Schedule(name, warmup=4, epochs=20)
    ramp = [s.eta(BASE, e) for e in range(4)]
    assert ramp == pytest.approx([BASE * (e + 1) / 5 for e in range(4)], rel=1e-15)
    assert all(a < b for a, b in zip(ramp, ramp[1:]))
    assert s.eta(BASE, 4) == pytest.approx(BASE, rel=1e-15)  # the first epoch after it: the base eta (t = 0)


def test_step_and_exp_follow_their_definitions():
    step, exp = Schedule("step", gamma=0.3, step_size=3), Schedule("exp", gamma=0.9)
    for e in range(12):
        assert step.eta(BASE, e) == pytest.approx(BASE * 0.3 ** (e // 3), rel=1e-15)
        assert exp.eta(BASE, e) == pytest.approx(BASE * 0.9 ** e, rel=1e-15)


@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_cosine_falls_from_the_base_to_the_floor_over_the_run(floor):
    s = Schedule("cosine", warmup=2, epochs=12, floor=floor)
    etas = [s.eta(BASE, e) for e in range(2, 13)]
    assert etas[0] == pytest.approx(BASE, rel=1e-15)
    assert etas[-1] == pytest.approx(BASE * floor, abs=1e-15)
    assert all(a > b for a, b in zip(etas, etas[1:]))
    mid = 2 + 5  # half way through the 10 epochs after warm-up: the mean of base and floor
    assert s.eta(BASE, mid) == pytest.approx(BASE * (floor + (1 - floor) / 2), rel=1e-12)
    assert s.eta(BASE, 40) == pytest.approx(BASE * floor, abs=1e-15)  # past the end it stays at the floor


def test_plateau_divides_after_patience_epochs_without_improvement_and_stops_at_1_128():
    s = Schedule("plateau", patience=3)
    accs = [0.90, 0.91, 0.91, 0.905, 0.91]  # best 0.91 at the second epoch, then three without improvement
    stops = [s.observe(a) for a in accs]
    assert not any(stops) and s.divisions == 1 and s.eta(BASE, 5) == pytest.approx(BASE / 2, rel=1e-15)
    assert s.observe(0.92) is False and s.since == 0  # an improvement resets the count
    epochs = 0
    while not s.observe(0.5):
        epochs += 1
        assert epochs < 100
    assert s.factor ** s.divisions == PLATEAU_STOP  # divided seven times: eta/128, where Nielsen stops
    assert epochs + 1 == 3 * (int(math.log2(PLATEAU_STOP)) - 1)


def test_schedules_other_than_plateau_never_stop_training():
    for name in SCHEDULES[:-1]:
        s = Schedule(name, epochs=5)
        assert not any(s.observe(0.1) for _ in range(50))


def test_settings_and_state_round_trip():
    s = Schedule("plateau", warmup=1, patience=2, factor=3.0)
    for a in (0.5, 0.4, 0.4, 0.6, 0.6):
        s.observe(a)
    t = Schedule.from_config(s.config(), s.state())
    assert (t.config(), t.state()) == (s.config(), s.state())
    assert [t.eta(BASE, e) for e in range(6)] == [s.eta(BASE, e) for e in range(6)]


@pytest.mark.parametrize("kwargs, needle", [
    ({"name": "linear"}, "unknown schedule 'linear'"),
    ({"name": "cosine"}, "needs the run's length"),
    ({"name": "cosine", "epochs": 3, "warmup": 3}, "epochs must be > warmup"),
    ({"name": "step", "gamma": 1.5}, "gamma must be in (0, 1]"),
    ({"name": "step", "gamma": "nan"}, "gamma must be in (0, 1]"),
    ({"name": "step", "step_size": 0}, "step size must be >= 1"),
    ({"name": "plateau", "factor": 1}, "factor must be > 1"),
    ({"name": "exp", "warmup": -1}, "warmup must be >= 0"),
    ({"name": "exp", "warmup": "x"}, "warmup must be a number"),
])
def test_bad_settings_are_one_line_errors(kwargs, needle):
    with pytest.raises(GpubpError) as e:
        Schedule(**kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_saved_state_is_refused():
    with pytest.raises(GpubpError, match="out of range"):
        Schedule.from_config({"name": "plateau"}, {"divisions": -1, "best": None, "since": 0})
    with pytest.raises(GpubpError, match="must hold"):
        Schedule.from_config({"name": "plateau"}, {"divisions": "many"})
    with pytest.raises(GpubpError, match="unknown schedule settings"):
        Schedule.from_config({"name": "step", "bogus": 1})


def test_make_schedule_passes_a_schedule_through_and_defaults_to_constant():
    s = Schedule("exp")
    assert make_schedule(s) is s
    c = make_schedule(None)
    assert c.name == "constant" and [c.eta(BASE, e) for e in range(3)] == [BASE] * 3
