import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO

ENTRY_POINTS = [["train.py"], ["eval.py"], ["export.py"], ["quant_report.py"], ["-m", "src.plots"],
                ["-m", "src.dataset"], ["-m", "src.convert_weights"],
                ["-m", "src.launch"], ["-m", "src.sample_data"], ["bench/bench_infer.py"],
                ["bench/bench_train.py"], ["bench/bench_data.py"], ["bench/bench_ab.py"],
                ["bench/torch_train.py"], ["bench/compile_phases.py"], ["bench/compile_scaling.py"]]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e[-1])
def test_every_option_in_help_says_what_it_does_and_its_default(entry, subprocess_env):
    result = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True,
                            env=subprocess_env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    # argparse help: an option line, its description, then "(default: ...)"
    blocks = re.split(r"\n(?=  -)", result.stdout.split("options:", 1)[1])
    options = [b for b in blocks if b.strip().startswith("--") and not b.strip().startswith("-h")]
    assert options
    for block in options:
        text = " ".join(block.split())
        name = text.split()[0]
        assert "(default:" in text, f"{entry}: {name} shows no default"
        description = text.split("(default:")[0]
        assert len(description.split()) >= 3, f"{entry}: {name} has no description"


@pytest.mark.parametrize("script", ["run_quickstart.sh", "run_standalone_train.sh", "run_eval.sh",
                                    "run_distribute_train.sh"])
def test_shell_scripts_explain_their_usage(script, subprocess_env):
    args = ["--help"] if script == "run_quickstart.sh" else []
    result = subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True,
                            text=True, env=subprocess_env)
    text = result.stdout + result.stderr
    assert "usage: bash" in text
    assert result.returncode == (0 if args else 2)


@pytest.mark.slow
def test_the_quick_start_runs_end_to_end(tmp_path, subprocess_env):
    """The README's first command (after the install): the whole flow on the synthetic set."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_quickstart.sh"), "--output_dir",
                             str(tmp_path / "qs")], capture_output=True, text=True, env=subprocess_env,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "SYNTHETIC" in out
    accuracies = re.findall(r"^result: \{'acc': (\d\.\d{4})\} ckpt= .*(ghostnet-final|ghostnet-int8)\.ckpt$",
                            out, re.M)
    assert [name for _, name in accuracies] == ["ghostnet-final", "ghostnet-int8"]
    assert all(float(acc) > 0.5 for acc, _ in accuracies)  # six classes: chance is 0.17
    assert sorted(p.name for p in (tmp_path / "qs" / "export").iterdir()) == [
        "class_names.txt", "ghostnet-final.mindir", "ghostnet-int8.mindir"]
    pictures = re.findall(r"^picture: (.+\.png)$", result.stdout, re.M)
    assert [os.path.relpath(p, tmp_path / "qs") for p in pictures] == [
        "float/history.png", "report/float/confusion.png", "report/int8/confusion.png", "report/quant_report.png"]
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.format == "PNG"
    for run in ("float", "int8"):
        report = json.loads((tmp_path / "qs" / "report" / run / "eval_report.json").read_text())
        assert len(report["classes"]) == 6 and report["samples"] == 63
    layers = re.search(r"^layer +# layer dB network dB weight dB .*\n((?:.+\n){5})report: ", result.stdout, re.M)
    assert layers, result.stdout[-3000:]  # the int8 report's five worst layers, printed


def test_compile_phases_sums_each_action_and_each_pass_over_its_rounds():
    from bench.compile_phases import PhaseLog

    stamp = "[INFO] PIPELINE(1,7f,python):2026-11-28-20:03:{} [pipeline.cc:402] operator()] "
    log = PhaseLog()
    for line in [stamp.format("46.779.767") + "Status record: start type_inference action.",
                 stamp.format("55.092.000") + "Status record: end type_inference action.",
                 stamp.format("56.000.000") + "RunFunc] Start opt_a.r1.j0.renormalize",
                 stamp.format("57.500.000") + "RunFunc] End opt_a.r1.j0.renormalize.changed",
                 stamp.format("58.000.000") + "RunFunc] Start opt_a.r2.j0.renormalize",
                 stamp.format("58.250.000") + "RunFunc] End opt_a.r2.j0.renormalize.unchanged",
                 "an unrelated line", "first step 47.250"]:
        log.read(line)
    assert log.actions == {"type_inference": pytest.approx(8.312233)}
    assert log.passes == {"opt_a.renormalize": pytest.approx(1.75)}
    assert log.pass_rounds["opt_a.renormalize"] == {"1", "2"}
    assert log.first_step == 47.25

    midnight = PhaseLog()  # a compile across midnight: the stamps give the time of day only
    for line in ["[INFO] x:2026-11-28-23:59:59.500.000 [a.cc:1] Status record: start optimize action.",
                 "[INFO] x:2026-11-29-00:00:01.000.000 [a.cc:1] Status record: end optimize action."]:
        midnight.read(line)
    assert midnight.actions == {"optimize": pytest.approx(1.5)}


def test_compile_scaling_growth_exponent_is_one_for_linear_and_two_for_quadratic_growth():
    from bench.compile_scaling import growth_exponents

    assert growth_exponents([30, 60, 120], [3.0, 6.0, 24.0]) == [pytest.approx(1.0), pytest.approx(2.0)]
    assert growth_exponents([120, 30, 60], [24.0, 3.0, 6.0]) == [pytest.approx(1.0), pytest.approx(2.0)]
    assert growth_exponents([30, 60, 120], [3.0, None, 24.0]) == [None, None]  # a failed compile


def test_a_bench_run_is_recorded_with_its_machine_only_when_it_completes(tmp_path, monkeypatch):
    from bench.timing import recorded

    monkeypatch.setattr(sys, "argv", ["bench/bench_x.py", "--rounds", "3"])
    with recorded("bench_x", folder=tmp_path):
        print("| runner | images/s |")
    (record,) = tmp_path.iterdir()
    assert re.fullmatch(r"bench_x-\d{4}-\d\d-\d\d-\d{6}-\w+(-dirty)?\.md", record.name)
    text = record.read_text()
    assert "`python bench/bench_x.py --rounds 3`" in text and "| runner | images/s |" in text
    assert re.search(r"^- CPU: .+, \d+ cores$", text, re.M)
    assert re.search(r"^- int8 instructions: ", text, re.M) and re.search(r"^- AMX: ", text, re.M)

    with pytest.raises(RuntimeError):
        with recorded("bench_y", folder=tmp_path):
            print("half a table")
            raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == [record.name]  # nothing half-made


def test_the_tests_read_nothing_outside_the_repository():
    """A user's clone has nothing beside it: fixtures live in tests/fixtures, and no test climbs
    out of the repository for them (to the steering repository's shared folder, say)."""
    outside = re.compile(r"REPO\.parent|parents\[[2-9]\]|\.\.[/\\]shared|/ *\"shared\"")
    offenders = [f"{path.name}:{number}" for path in sorted((REPO / "tests").glob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert offenders == []
    from timm_reference import FIXTURES, REFERENCES, outputs_file

    assert FIXTURES.is_relative_to(REPO)
    assert all(outputs_file(stem).is_file() for stem, _, _ in REFERENCES)
    assert sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file()) < 1_000_000  # kilobytes, not 39 MB
