"""lipref against the independent PyTorch reference, and importing PyTorch checkpoints.

- On drawn small networks (dense, conv with a strided layer whose adjoint needs output
  padding, adjacent affine layers; ReLU, clipped ReLU, MaxMin; float64) and on each named
  architecture with random weights, `check_against_torch` passes: logits, pre-activation
  boxes, identical masks, local norms, global and local bounds, GloRo and BCP worst-case
  logits, and the gradients of the GloRo (and BCP) loss for every parameter.
- A checkpoint of each named architecture saved by torch imports to a model with the same
  logits; missing, unexpected and wrong-shape parameters are all listed in one error.
"""
import sys

import numpy
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'lipref[torch]'): "
                                            "no reference checks")

from lipref import check as C  # noqa: E402
from lipref.backend import get_backend  # noqa: E402
from lipref.bounds.certificate import ball_box_support  # noqa: E402
from lipref.layers import ClampedMaxMin, ClippedReLU, Conv2d, Flatten, Linear, ReLU, Sequential  # noqa: E402
from lipref.models import ARCHITECTURES, build_model, load_model  # noqa: E402
from lipref.reference import torch_margins as RM  # noqa: E402
from lipref.reference import torch_reference as R  # noqa: E402
from lipref.torch_import import TORCH_MISSING, TorchImportError, TorchNotInstalled, import_torch_checkpoint  # noqa: E402

XP = get_backend("numpy")


def assert_all_ok(results):
    bad = [f"{r['quantity']}: {r['max_rel_diff']} > {r['tolerance']} ({r['unit']})" for r in results if not r["ok"]]
    assert not bad, "lipref and the torch reference disagree:\n" + "\n".join(bad)


# ---------------------------------------------------------------- drawn small networks

def _act(kind, shape):
    return {"relu": ReLU, "clipped_relu": lambda s: ClippedReLU(s, 0.5),
            "maxmin": lambda s: ClampedMaxMin(s, 0.5)}[kind](shape)


def small_layers(layout, kind):
    if layout == "dense":
        return [Linear(6, 10), _act(kind, (10,)), Linear(10, 8), _act(kind, (8,)), Linear(8, 4)]
    if layout == "adjacent":  # two affine layers in a row: the first one's rows are all kept
        return [Linear(6, 10), Linear(10, 8), _act(kind, (8,)), Linear(8, 4)]
    c1 = Conv2d((2, 7, 7), 4, 4, 2, 1)  # 7x7 -> 3x3: the adjoint needs output padding 1
    c2 = Conv2d(c1.out_shape, 4, 3, 1, 1)
    return [c1, _act(kind, c1.out_shape), c2, _act(kind, c2.out_shape), Flatten(c2.out_shape),
            Linear(36, 6), _act(kind, (6,)), Linear(6, 3)]


def small_model(layout, kind, seed):
    """A small float64 net with random weights, biases and per-neuron thresholds, so that
    every mask case (off, saturated, clamped, moving) occurs."""
    rng = numpy.random.default_rng(seed)
    model = Sequential(small_layers(layout, kind)).init_params(XP, XP.float64, rng)
    for layer in model.layers:
        for name, var in layer.params.items():
            shape = tuple(var.value.shape)
            if name in ("threshold", "max"):
                var.value = XP.asarray(rng.uniform(0.05, 1.0, shape))
            elif name == "min":
                var.value = XP.asarray(rng.uniform(-1.0, -0.05, shape))
            elif name == "bias":
                var.value = XP.asarray(rng.normal(0.0, 0.3, shape))
    return model, rng


@settings(max_examples=40, deadline=None)
@given(layout=st.sampled_from(["dense", "adjacent", "conv"]), kind=st.sampled_from(["relu", "clipped_relu", "maxmin"]),
       seed=st.integers(0, 2**31 - 1), eps=st.floats(0.01, 0.5), n_iters=st.integers(0, 6), batch=st.integers(1, 3))
@example(layout="conv", kind="relu", seed=271, eps=0.25, n_iters=1, batch=1)  # a gradient zero up to 1.7e-18
def test_drawn_small_models_match_reference(layout, kind, seed, eps, n_iters, batch):
    model, rng = small_model(layout, kind, seed)
    x = rng.uniform(0.0, 1.0, (batch,) + model.input_shape)
    labels = rng.integers(0, model.n_classes, batch)
    losses = ("gloro", "bcp", "gloro-bcp")
    assert_all_ok(C.check_against_torch(model, x, labels, eps, n_iters, rng, loss_names=losses))


def test_comparison_ignores_rounding_noise_in_a_zero_gradient_but_not_real_differences():
    """Seen on a drawn conv model (seed 271, BCP loss): lipref's gradient of the last
    weight was 1.7e-18 in one entry and 0 elsewhere, torch's exactly 0, while the same
    loss's bias gradient was about 0.3; a relative difference of 1.0 there is rounding, not
    disagreement. A real difference in a small but nonzero gradient still fails."""
    zero = numpy.zeros((3, 6))
    noisy = zero.copy()
    noisy[0, 5] = 1.7e-18
    bias = numpy.array([0.26, -0.53, 0.26])
    ok = C.compare({"bcp grad w": noisy, "bcp grad b": bias}, {"bcp grad w": zero, "bcp grad b": bias}, 1e-6)
    assert all(r["ok"] for r in ok)
    small = numpy.full((3, 6), 1e-3)
    off = small.copy()
    off[1, 2] *= 1 + 1e-3  # 1e-6 of the loss's gradient scale, 1e-3 of this block's
    bad = C.compare({"bcp grad w": small, "bcp grad b": bias}, {"bcp grad w": off, "bcp grad b": bias}, 1e-6)
    assert [r["quantity"] for r in bad if not r["ok"]] == ["bcp grad w"]
    # values other than gradients keep the plain relative difference
    logits = C.compare({"logits": noisy}, {"logits": zero}, 1e-6)
    assert not logits[0]["ok"]


def stale_mask_model():
    """x -> relu([x, -x]) -> [0, h0] -> [h0, 0] -> relu -> logits [h0 - 1.05, 1.05 - h0].
    At x = 1, eps = 0.1 the second ReLU neuron is off, so a mask [1, 0] exists; the third
    affine layer's inputs are outputs of an affine layer and can all move (h0 moves with x),
    so the local Lipschitz bound of x -> penultimate is 1, not 0."""
    model = Sequential([Linear(1, 2), ReLU((2,)), Linear(2, 2), Linear(2, 2), ReLU((2,)), Linear(2, 2)])
    model.init_params(XP, XP.float64, numpy.random.default_rng(0))
    model.set_parameters({"0.weight": XP.asarray([[1.0], [-1.0]]), "0.bias": XP.zeros(2),
                          "2.weight": XP.asarray([[0.0, 0.0], [1.0, 0.0]]), "2.bias": XP.zeros(2),
                          "3.weight": XP.asarray([[0.0, 1.0], [0.0, 0.0]]), "3.bias": XP.zeros(2),
                          "5.weight": XP.asarray([[1.0, 0.0], [-1.0, 0.0]]), "5.bias": XP.asarray([-1.05, 1.05])})
    return model


def test_reference_keeps_all_columns_after_an_affine_layer():
    model = stale_mask_model()
    g, loc = C.start_vectors(model, 1, numpy.random.default_rng(0))
    bounds = R.network_bounds(R.to_torch(model), torch.tensor([[1.0]], dtype=torch.float64), 0.1, 20,
                              {i: torch.as_tensor(v) for i, v in loc.items()},
                              {i: torch.as_tensor(v) for i, v in g.items()})
    assert float(bounds.lipschitz[0].detach()) == pytest.approx(1.0, rel=1e-12)


# regression: network_bounds once kept the previous activation's mask for the layer after an
# affine layer (a shape error, or silently removed columns: an unsound bound)
@pytest.mark.parametrize("which", ["shape error", "silent"])
def test_adjacent_affine_layers_match_reference(which):
    if which == "silent":
        model, x, rng = stale_mask_model(), numpy.array([[1.0]]), numpy.random.default_rng(0)
    else:
        model, rng = small_model("adjacent", "relu", 0)
        x = rng.uniform(0.0, 1.0, (2,) + model.input_shape)
    assert_all_ok(C.check_against_torch(model, x, numpy.ones(x.shape[0], dtype=numpy.int64), 0.1, 5, rng))


@pytest.mark.parametrize("kind", ["relu", "clipped_relu", "maxmin"])
def test_masks_are_exercised(kind):
    """The comparisons above are not vacuous: masks mix constant and moving neurons, and the
    local bound is below the global one."""
    model, rng = small_model("conv", kind, 7)
    x = rng.uniform(0.0, 1.0, (4,) + model.input_shape)
    g, loc = C.start_vectors(model, 4, rng)
    values = C.lipref_values(model, x, numpy.zeros(4, dtype=numpy.int64), 0.1, 5, g, loc)
    masks = numpy.concatenate([v.ravel() for k, v in values.items() if "output mask" in k])
    assert 0.0 < masks.mean() < 1.0
    assert numpy.all(values["local bound"] < values["global bound"])


# ---------------------------------------------------------------- named architectures

@pytest.mark.parametrize("arch,shape,activation,batch,loss_names", [
    ("4c3f", (1, 28, 28), "relu", 2, ("gloro", "bcp", "gloro-bcp")),
    ("4c3f", (1, 28, 28), "clipped_relu", 2, ("gloro-bcp",)),
    ("4c3f", (3, 32, 32), "clipped_relu", 2, ("gloro",)),
    ("6c2f", (3, 32, 32), "relu", 2, ("gloro",)),
    ("6c2f", (3, 32, 32), "maxmin", 2, ("gloro",)),
    ("8c2f", (3, 32, 32), "relu", 1, ("gloro",)),
])
def test_named_architectures_match_reference(arch, shape, activation, batch, loss_names):
    rng = numpy.random.default_rng(3)
    model = build_model(arch, shape, 10, XP, XP.float64, rng, activation=activation)
    x = rng.uniform(0.0, 1.0, (batch,) + shape)
    labels = rng.integers(0, 10, batch)
    results = C.check_against_torch(model, x, labels, 0.05, 2, rng, loss_names=loss_names)
    assert_all_ok(results)
    assert all(any(r["quantity"].startswith(f"{loss} grad") for r in results) for loss in loss_names)


# ---------------------------------------------------------------- pieces of the reference

@pytest.mark.parametrize("size,k,stride,pad", [(7, 4, 2, 1), (8, 4, 2, 1), (9, 3, 2, 1), (6, 3, 1, 1), (10, 3, 3, 0)])
def test_reference_conv_adjoint(size, k, stride, pad):
    """<conv(x), y> == <x, adjoint(y)>, including strides that drop input rows."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, k, stride=stride, padding=pad).double()
    x = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
    y_shape = R.affine(conv, x, conv.weight, None).shape
    y = torch.randn(y_shape, generator=gen, dtype=torch.float64)
    back = R.adjoint(conv, y, conv.weight, tuple(x.shape))
    assert back.shape == x.shape
    lhs = (R.affine(conv, x, conv.weight, None) * y).sum()
    assert float(lhs.detach()) == pytest.approx(float((x * back).sum().detach()), rel=1e-12)


def test_reference_bcp_support_matches_lipref():
    """The reference's ball-and-box maximum (torch) equals lipref's, both exact."""
    rng = numpy.random.default_rng(5)
    c = rng.normal(size=(200, 12))
    c[::7, 3] = 0.0
    lo, hi = -rng.uniform(0, 0.5, (200, 12)), rng.uniform(0, 0.5, (200, 12))
    radius = rng.uniform(0.05, 1.5, 200)
    ours, _, _ = ball_box_support(c, lo, hi, radius)
    exact = RM.ball_box_support(*(torch.as_tensor(a) for a in (c, lo, hi, radius)))
    numpy.testing.assert_allclose(ours, exact.numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- checkpoint import

NAMED = [("4c3f", (1, 28, 28), "relu"), ("4c3f", (3, 32, 32), "relu"), ("6c2f", (3, 32, 32), "relu"),
         ("6c2f", (3, 32, 32), "maxmin"), ("8c2f", (3, 32, 32), "relu"), ("4c3f", (1, 28, 28), "clipped_relu")]


def official_model(convs, widths, shape, activation, seed=0):
    """An nn.Sequential in the paper's layout, torch's default init, random thresholds."""
    torch.manual_seed(seed)
    net = R.torch_sequential(convs, widths, shape, 10, activation)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith((".threshold", ".max")):
                p.uniform_(0.2, 1.5)
            elif name.endswith(".min"):
                p.uniform_(-1.5, -0.2)
    return net


def assert_same_logits(model, net, shape):
    x = torch.rand((3,) + tuple(shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x).numpy()
    got = numpy.asarray(model(XP.asarray(x.numpy()), record=False))
    assert got.dtype == numpy.float32
    numpy.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,shape,activation", NAMED)
@pytest.mark.parametrize("given_as", ["name", "auto"])
def test_import_named_architecture(tmp_path, arch, shape, activation, given_as):
    net = official_model(*ARCHITECTURES[arch], shape, activation)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    model = import_torch_checkpoint(path, arch if given_as == "name" else "auto", shape, 10,
                                    activation if given_as == "name" else "auto")
    assert model.metadata["arch"] == arch and model.metadata["activation"] == activation
    assert_same_logits(model, net, shape)


def test_import_generic_conv_stack_needs_its_spec(tmp_path):
    convs, widths, shape = [(8, 3, 1, 1), (6, 4, 2, 1)], [20], (1, 9, 9)
    net = official_model(convs, widths, shape, "relu")
    path = tmp_path / "generic.pt"
    torch.save(net.state_dict(), path)
    model = import_torch_checkpoint(path, "conv:8:3:1:1,conv:6:4:2:1,fc:20", shape, 10, "relu")
    assert_same_logits(model, net, shape)
    with pytest.raises(TorchImportError, match="conv stack needs"):
        import_torch_checkpoint(path, "auto", shape, 10, "relu")


def test_import_dense_stack_auto(tmp_path):
    net = official_model([], [16, 12], (1, 5, 5), "maxmin")
    path = tmp_path / "mlp.pt"
    torch.save({"model_state_dict": net.state_dict()}, path)
    model = import_torch_checkpoint(path, "auto", (1, 5, 5), None, "auto")
    assert model.metadata["arch"] == "mlp-16-12" and model.metadata["activation"] == "maxmin"
    assert model.n_classes == 10
    assert_same_logits(model, net, (1, 5, 5))


@pytest.mark.parametrize("container", ["state_dict", "model_state_dict", "model", None])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_import_containers_and_data_parallel_prefix(tmp_path, container, prefix):
    net = official_model(*ARCHITECTURES["2c2f"], (1, 12, 12), "clipped_relu")
    state = {prefix + k: v for k, v in net.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save(state if container is None else {container: state}, path)
    model = import_torch_checkpoint(path, "2c2f", (1, 12, 12), 10, "clipped_relu")
    assert_same_logits(model, net, (1, 12, 12))


def test_import_lists_every_bad_key(tmp_path):
    state = official_model(*ARCHITECTURES["4c3f"], (1, 28, 28), "relu").state_dict()
    del state["0.bias"]
    state["20.weight"] = torch.zeros(3, 3)
    state["2.weight"] = torch.zeros(32, 32, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(TorchImportError) as info:
        import_torch_checkpoint(path, "4c3f", (1, 28, 28), 10, "relu")
    message = str(info.value)
    assert "missing 0.bias" in message
    assert "unexpected 20.weight" in message
    assert "wrong shape 2.weight" in message and "(32, 32, 3, 3)" in message and "(32, 32, 4, 4)" in message
    assert isinstance(info.value, ValueError)


def test_import_wrong_activation_lists_thresholds(tmp_path):
    net = official_model(*ARCHITECTURES["2c2f"], (1, 12, 12), "relu")
    path = tmp_path / "relu.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(TorchImportError, match="missing 1.threshold"):
        import_torch_checkpoint(path, "2c2f", (1, 12, 12), 10, "clipped_relu")


def test_import_unreadable_files(tmp_path):
    with pytest.raises(TorchImportError, match="no such checkpoint"):
        import_torch_checkpoint(tmp_path / "absent.pt", "2c2f", (1, 12, 12), 10, "relu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(TorchImportError, match="weights-only"):
        import_torch_checkpoint(garbage, "2c2f", (1, 12, 12), 10, "relu")
    pickled = tmp_path / "module.pt"
    torch.save(official_model(*ARCHITECTURES["2c2f"], (1, 12, 12), "relu"), pickled)  # a whole module: code
    with pytest.raises(TorchImportError, match="weights-only"):
        import_torch_checkpoint(pickled, "2c2f", (1, 12, 12), 10, "relu")
    no_state = tmp_path / "nostate.pt"
    torch.save({"epoch": 3}, no_state)
    with pytest.raises(TorchImportError, match="no state dict"):
        import_torch_checkpoint(no_state, "2c2f", (1, 12, 12), 10, "relu")


def test_import_saves_model_file(tmp_path):
    net = official_model(*ARCHITECTURES["2c2f"], (1, 12, 12), "maxmin")
    path, out = tmp_path / "ckpt.pt", tmp_path / "model.npz"
    torch.save({"state_dict": net.state_dict()}, path)
    model = import_torch_checkpoint(path, "2c2f", (1, 12, 12), 10, "maxmin", out_path=out)
    loaded = load_model(out, XP, XP.float32)
    for name, var in model.parameters().items():
        assert numpy.array_equal(numpy.asarray(loaded.parameters()[name].value), numpy.asarray(var.value))
    assert loaded.metadata["imported_from"] == "ckpt.pt"


def test_missing_torch_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(TorchNotInstalled, match="pip install 'lipref\\[torch\\]'") as info:
        import_torch_checkpoint(tmp_path / "x.pt", "2c2f", (1, 12, 12), 10, "relu")
    assert str(info.value) == TORCH_MISSING
