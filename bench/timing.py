"""Alternating-rounds timing shared by the bench scripts."""
import statistics
import time


def images_per_second(run, batch, seconds):
    """Call ``run()`` (one batch of ``batch`` images) for about ``seconds``; images/s."""
    done, start = 0, time.perf_counter()
    while True:
        run()
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def alternating_medians(runners, batch, rounds, seconds):
    """``{name: median images/s}``: every runner warms up once, then they take turns."""
    for run in runners.values():
        run()
    speeds = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            speeds[name].append(images_per_second(run, batch, seconds))
    return {name: statistics.median(values) for name, values in speeds.items()}


def print_table(medians, references, extra=None):
    """One row per runner: images/s and the ratio to each present reference runner."""
    present = [r for r in references if r in medians]
    extra = extra or {}
    header = f"{'':>16} {'images/s':>9}" + "".join(f" {'vs ' + r:>18}" for r in present)
    header += "".join(f" {name:>9}" for name in next(iter(extra.values()), {}))
    print(header)
    for name, value in medians.items():
        row = f"{name:>16} {value:>9.1f}" + "".join(f" {value / medians[r]:>17.2f}x" for r in present)
        row += "".join(f" {cell:>9}" for cell in extra.get(name, {}).values())
        print(row)
