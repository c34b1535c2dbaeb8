"""The training benchmark's rates: warm-up and profiled steps are left out of the steady rate, every other step
counts, and a run shorter or longer than the one epoch its token count assumes is refused."""

from types import SimpleNamespace

import pytest

from bench.gpu_training import _profiled, main, profile_callback, step_clock


def _run(clock, durations: list[float]) -> None:
    now = 0.0
    for step, duration in enumerate(durations, start=1):
        now += duration
        clock.times.append((step, now))


def test_steady_rate_leaves_out_warm_up_and_profiled_steps():
    clock = step_clock()
    # 10 steps: the first two (a fifth) are compilation; steps 6 and 7 ran under the profiler
    _run(clock, [30.0, 5.0, 1.0, 1.0, 1.0, 9.0, 9.0, 1.0, 1.0, 1.0])
    assert clock.steady_steps_per_s({6, 7}) == pytest.approx(1.0)
    assert clock.steady_steps_per_s() == pytest.approx(7 / 23)


def test_profiled_steps_are_the_ones_the_profilers_slow_down():
    profiler = profile_callback("run", steps=3, first_step=20)
    # torch's profiler covers steps 21-23 (it starts before step 21), cProfile steps 29-31; each prints its
    # tables after the clock stamped the window's last step, so the step after it is slowed too
    assert _profiled([profiler]) == {21, 22, 23, 24, 29, 30, 31, 32}
    assert _profiled([]) == set()


def test_clock_records_the_trainer_step():
    clock = step_clock()
    clock.on_step_end(None, SimpleNamespace(global_step=7), None)
    assert clock.times[0][0] == 7


@pytest.mark.parametrize("override", ['{"max_steps": 5}', '{"epochs": 2}'])
def test_runs_other_than_one_epoch_are_refused_before_any_work(override, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["gpu_training.py", "--model", "tiny", "--ours", "{}", override])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "may not set max_steps or epochs" in capsys.readouterr().err


def test_step_times_count_the_first_step_from_the_start_of_training():
    clock = step_clock()
    clock.started = 0.0
    _run(clock, [3.0, 1.5, 0.04])
    assert clock.step_ms() == [3000.0, 1500.0, 40.0]
