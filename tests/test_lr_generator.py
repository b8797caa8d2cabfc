import numpy as np
import pytest

from src.lr_generator import get_lr


def test_warmup_then_cosine_to_lr_end():
    rates = get_lr(0.4, total_epochs=4, steps_per_epoch=2, warmup_epochs=1, lr_end=0.01)
    expected = [0.2, 0.4] + [0.01 + 0.39 * 0.5 * (1 + np.cos(np.pi * k / 6)) for k in range(6)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert rates.dtype == np.float32 and len(rates) == 8


def test_cosine_is_monotonic_after_warmup_and_ends_near_lr_end():
    rates = get_lr(0.1, total_epochs=50, steps_per_epoch=10, warmup_epochs=2, lr_end=0.0)
    assert rates.argmax() == 19
    assert np.all(np.diff(rates[19:]) <= 0)
    assert rates[-1] < 1e-4


def test_step_and_constant_schedules():
    step = get_lr(1.0, total_epochs=6, steps_per_epoch=1, schedule="step", step_epochs=2, step_gamma=0.5)
    np.testing.assert_allclose(step, [1, 1, 0.5, 0.5, 0.25, 0.25])
    constant = get_lr(0.3, total_epochs=3, steps_per_epoch=2, warmup_epochs=1, schedule="constant")
    np.testing.assert_allclose(constant, [0.15, 0.3, 0.3, 0.3, 0.3, 0.3], rtol=1e-6)


def test_the_step_schedule_stops_at_lr_end():
    step = get_lr(1.0, total_epochs=6, steps_per_epoch=1, schedule="step", step_epochs=2, step_gamma=0.1,
                  lr_end=0.05)
    np.testing.assert_allclose(step, [1, 1, 0.1, 0.1, 0.05, 0.05], rtol=1e-6)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="'poly'"):
        get_lr(0.1, 1, 1, schedule="poly")
