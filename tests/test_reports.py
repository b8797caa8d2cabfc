"""What a user looks at: eval's per-class report, the training history picture, and the
quantization report that says which layer loses accuracy in int8."""
import json
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_NET, run
from src.checkpoint import load_strict
from src.errors import MissingPackageError
from src.evaluation import class_report
from src.ghostnet import GhostNet
from src.plots import draw_history
from src.quant import build_int8_network, int8_params, observe_ranges, prepare
from src.quant.report import format_table, quantization_report, sqnr_db


def test_class_report_gives_each_breeds_accuracy_and_the_most_confused_pairs():
    names = ["beagle", "boxer", "pug"]
    confusion = np.array([[8, 2, 0],   # beagle: 2 taken for boxer
                          [5, 5, 0],   # boxer: 5 taken for beagle
                          [0, 0, 0]])  # no pug in the data
    report = class_report(confusion, names)
    assert [(c["name"], c["samples"], c["correct"], c["accuracy"]) for c in report["classes"]] == [
        ("beagle", 10, 8, 0.8), ("boxer", 10, 5, 0.5), ("pug", 0, 0, None)]
    assert [(p["true"], p["predicted"], p["count"], p["share"]) for p in report["most_confused"]] == [
        ("boxer", "beagle", 5, 0.5), ("beagle", "boxer", 2, 0.2)]


def test_history_picture_for_a_run_folder_and_a_clear_message_without_matplotlib(tmp_path, monkeypatch,
                                                                                 subprocess_env):
    epochs = [{"epoch": e, "loss": 2.0 / e, "lr": 0.1 * (5 - e), "images_per_second": 50.0,
               "top1": 0.2 * e} for e in range(1, 5)]
    (tmp_path / "history.json").write_text(json.dumps({"epochs": epochs}))
    path = draw_history(str(tmp_path))
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width > 3 * picture.height > 600
    # on demand, for any run folder; a folder train.py did not write is named
    result = run(subprocess_env, "src/plots.py", tmp_path, tmp_path / "nothing")
    assert result.returncode == 2
    assert result.stdout.strip() == str(tmp_path / "history.png")
    assert f"{tmp_path / 'nothing' / 'history.json'} not found" in result.stderr
    assert "Traceback" not in result.stderr

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails as if not installed
    with pytest.raises(MissingPackageError, match=r"pip install -r requirements-plots\.txt"):
        draw_history(str(tmp_path))


def test_quantization_report_puts_the_badly_quantized_layer_first():
    """One layer's input range made 50 times too wide (as an outlier in the calibration data
    does): its values then use a fiftieth of the 256 levels."""
    ms.set_seed(5)
    float_params = {n: p.asnumpy().copy() for n, p in GhostNet(width=0.5, num_classes=4).parameters_and_names()}
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    fake_quant = GhostNet(width=0.5, num_classes=4)
    load_strict(fake_quant, float_params)
    fake_quant = prepare(fake_quant)
    observe_ranges(fake_quant, [ms.Tensor(b) for b in batches], eager=True)
    fake_quant.set_train(False)
    params = int8_params(fake_quant)
    bad = "blocks.3.ghost1.primary_conv.conv"  # reads the residual sum: its quantization is its own
    params[f"{bad}.act_scale"] = params[f"{bad}.act_scale"] * 50
    int8_net = build_int8_network(width=0.5, num_classes=4)
    load_strict(int8_net, params)
    float_net = GhostNet(width=0.5, num_classes=4)
    load_strict(float_net, float_params)

    rows = quantization_report(float_net, int8_net, batches)
    assert len(rows) == len(float_net.conv_bn_pairs()) + 1  # every convolution and the classifier
    first, rest = rows[0], rows[1:]
    assert first.name == bad
    assert first.range_used < 0.05 and first.clipped == 0
    assert first.layer_sqnr < min(r.layer_sqnr for r in rest) - 10
    # the layers before it are as good as int8 makes them; its weights are untouched
    assert all(r.layer_sqnr > 20 and r.range_used > 0.3 for r in rest)
    assert first.weight_sqnr > 35
    before = [r for r in rest if r.index < first.index]
    assert min(r.network_sqnr for r in before) > first.network_sqnr + 10
    assert format_table(rows).splitlines()[1].startswith(bad)


def test_sqnr_is_ten_log_ten_of_signal_over_noise():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == float("inf")


@pytest.mark.slow
def test_quant_report_script_writes_table_json_and_picture(int8_recipe):
    root, env = int8_recipe
    data = root / "data"
    result = run(env, "quant_report.py", "--float_checkpoint", root / "float" / "ghostnet-final.ckpt",
                 "--int8_checkpoint", root / "ptq" / "ghostnet-int8.ckpt", "--dataset_path",
                 data / "test.mindrecord", "--batches", 1, "--output_dir", root / "report",
                 *SMALL_NET, "--top", 3)
    assert result.returncode == 0, result.stderr
    report = json.loads((root / "report" / "quant_report.json").read_text())
    layers = report["layers"]
    assert len(layers) == len(GhostNet(width=0.5, num_classes=4).conv_bn_pairs()) + 1
    sqnrs = [layer["layer_sqnr"] for layer in layers]
    assert sqnrs == sorted(sqnrs)  # worst first
    printed = result.stdout.splitlines()
    assert printed[0].split()[:3] == ["layer", "#", "layer"] and printed[1].startswith(layers[0]["name"])
    assert len([line for line in printed if line.startswith(("conv_stem", "blocks", "conv_head", "classifier"))]) == 3
    base = root / "report" / "quant_report"
    assert printed[-1] == f"report: {base}.txt, {base}.json, {base}.png"
    text = (root / "report" / "quant_report.txt").read_text().splitlines()
    assert len(text) == len(layers) + 2  # a comment, the header, a row a layer
    with Image.open(root / "report" / "quant_report.png") as picture:
        assert picture.format == "PNG" and picture.width > 800


def test_classify_reads_predicts_and_prints_a_batch_at_a_time(tmp_path, monkeypatch, capsys, caplog):
    """A folder of any size takes one batch's memory: each batch is read, predicted and printed
    before the next is read, and long runs say how far they are."""
    import classify

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(11):
        Image.new("RGB", (20 + i, 24), (10 * i, 0, 0)).save(folder / f"p{i:02d}.jpg")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    events = []
    load_image = classify.load_image
    monkeypatch.setattr(classify, "load_image", lambda path, size: (events.append("read"), load_image(path, size))[1])

    def predictor(images):
        events.append(len(images))
        return np.tile([[0.0, 1.0]], (len(images), 1)).astype(np.float32)
    monkeypatch.setattr(classify, "create_predictor", lambda *args, **kwargs: predictor)
    monkeypatch.setattr(classify, "set_device", lambda *args, **kwargs: None)  # the context is the suite's
    monkeypatch.setattr(classify.Progress, "PROGRESS_SECONDS", 0)
    args = classify.get_args_parser().parse_args([str(folder), "--checkpoint_path", str(tmp_path / "x.ckpt"),
                                                  "--class_names", str(tmp_path / "names.txt"),
                                                  "--batch_size", "4", "--image_size", "16"])
    caplog.set_level("INFO", logger="classify")
    results = classify.main(args)
    assert events == ["read"] * 4 + [4] + ["read"] * 4 + [4] + ["read"] * 3 + [3]
    assert len(results) == 11 and results[0][0][0] == "dog"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(folder / "p00.jpg") and printed[1].split() == ["0.7311", "dog"]
    assert [r.getMessage().split(" (")[0] for r in caplog.records if "classified" in r.getMessage()] == [
        "classified 4/11 pictures", "classified 8/11 pictures", "classified 11/11 pictures"]
