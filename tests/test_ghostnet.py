import numpy as np
import mindspore as ms
import pytest

from src.ghostnet import BLOCK_TABLE, GhostNet, create_model, make_divisible
from src.model_stats import count_macs, count_trainable_parameters
from timm_reference import FIXTURES


def zoo_names():
    rows = (FIXTURES / "zoo_ghostnet" / "float_param_names.tsv").read_text().splitlines()
    entries = [row.split("\t") for row in rows if row and not row.startswith("#")]
    return [(name, tuple(int(v) for v in shape.strip("[]").split(","))) for name, shape in entries]


@pytest.mark.parametrize("num_classes, expected", [(1000, 5_182_508), (37, 3_948_905)])
def test_trainable_parameters_match_the_reference(num_classes, expected):
    assert count_trainable_parameters(GhostNet(num_classes=num_classes)) == expected


def test_macs_at_224_counted_from_the_network():
    macs = count_macs(GhostNet(num_classes=1000), image_size=224)
    assert round(macs / 1e6, 2) == 141.15


def test_macs_scale_with_resolution():
    net = GhostNet(num_classes=1000)
    # Spatial work shrinks 4x at half resolution; the head (1x1 on pooled features) does not.
    assert count_macs(net, 112) < count_macs(net, 224) / 3


def test_parameter_names_and_shapes_equal_the_zoo():
    ours = [(name, tuple(p.shape)) for name, p in GhostNet(num_classes=37).parameters_and_names()]
    assert ours == zoo_names()


def test_block_table_has_the_papers_sixteen_bottlenecks():
    assert sum(len(stage) for stage in BLOCK_TABLE) == 16
    assert [row[4] for stage in BLOCK_TABLE for row in stage].count(2) == 4


@pytest.mark.parametrize("value, expected", [(16 * 0.5, 8), (72 * 1.3, 92), (18, 20), (3, 4)])
def test_make_divisible_rounds_like_timm(value, expected):
    assert make_divisible(value, 4) == expected


@pytest.mark.parametrize("name", ["ghostnet_050", "ghostnet_100", "ghostnet_130"])
def test_every_width_runs_forward_and_features(name):
    net = create_model(name, num_classes=5)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    logits = net(x)
    assert logits.shape == (2, 5)
    assert np.isfinite(logits.asnumpy()).all()
    assert net.forward_features(x).shape == (2, net.num_features, 2, 2)


def test_forward_features_is_960_by_7_by_7_at_224():
    net = GhostNet(num_classes=37)
    net.set_train(False)
    assert net.forward_features(ms.ops.zeros((1, 3, 224, 224), ms.float32)).shape == (1, 960, 7, 7)


def test_create_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="ghostnet_100"):
        create_model("ghostnet_200")


def test_backward_reaches_every_trainable_parameter():
    net = GhostNet(width=0.5, num_classes=4, dropout=0.0)
    net.set_train(True)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    params = net.trainable_params()

    def loss_fn(images):
        return (net(images) ** 2).sum()

    grads = ms.grad(loss_fn, grad_position=None, weights=params)(x)
    no_grad = [p.name for p, g in zip(params, grads) if not np.abs(g.asnumpy()).sum() > 0]
    assert not no_grad
    assert all(np.isfinite(g.asnumpy()).all() for g in grads)


def test_reset_classifier_keeps_the_parameter_names():
    net = GhostNet(num_classes=1000)
    net.reset_classifier(37)
    params = dict(net.parameters_and_names())
    assert params["classifier.weight"].shape == (37, 1280)
    assert params["classifier.weight"].name == "classifier.weight"
    assert net(ms.ops.zeros((1, 3, 32, 32), ms.float32)).shape == (1, 37)


def test_dropout_draws_the_same_masks_from_the_same_seed():
    """Two trainings with one seed must see the same dropout masks; MindSpore's CPU Dropout
    kernel drew other masks from one seed on every run (src.ghostnet.Dropout)."""
    from src.ghostnet import Dropout

    ones = ms.Tensor(np.ones((16, 1280), np.float32))

    def outputs():
        ms.set_seed(1)
        dropout = Dropout(0.2)
        dropout.set_train(True)
        drawn = np.stack([dropout(ones).asnumpy() for _ in range(100)])
        dropout.set_train(False)
        np.testing.assert_array_equal(dropout(ones).asnumpy(), ones.asnumpy())  # eval: identity
        return drawn

    first = outputs()
    np.testing.assert_array_equal(first, outputs())
    assert set(np.unique(first)) == {0.0, 1.25}  # kept values scaled by 1 / (1 - p)
    assert abs((first == 0).mean() - 0.2) < 0.005
    assert len({mask.tobytes() for mask in first == 0}) == len(first)  # a new mask every call


def test_a_steps_dropout_mask_depends_on_its_seed_alone():
    from src.ghostnet import HEAD_CHANNELS, dropout_mask

    mask = dropout_mask(0.2, 64, (1, 0, 17))
    assert mask.shape == (64, HEAD_CHANNELS) and mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) == {0.0, np.float32(1 / 0.8)}
    assert abs((mask == 0).mean() - 0.2) < 0.01  # 81,920 draws
    np.testing.assert_array_equal(mask, dropout_mask(0.2, 64, (1, 0, 17)))  # in any process, at any time
    assert (mask != dropout_mask(0.2, 64, (1, 0, 18))).any()  # the next step
    assert (mask != dropout_mask(0.2, 64, (1, 1, 17))).any()  # another worker
    np.testing.assert_array_equal(dropout_mask(0.0, 2, (1, 0, 1)), np.ones((2, HEAD_CHANNELS), np.float32))
