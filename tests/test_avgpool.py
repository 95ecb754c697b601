"""Average pooling (layers.AvgPool2d): a conv with a constant kernel, bounded through the same
hooks as every affine layer. The tests every layer gets: its forward against torch's own
avg_pool2d, its norms against the exact norm of its matrix, certificates against a dense grid
of the ball (a 2-pixel image, padded, so the ball is a disk), the bounds and the robust losses'
gradients against the independent torch reference, and import from ONNX (AveragePool) and from
a torch checkpoint's generic stack, certify in both modes and train, end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networks import materialise
from test_certificate_grid import ULP, counterexamples, float64_twin

from support import examples

from lipref.backend import to_host
from lipref.bounds import global_norms
from lipref.certification import CertifyConfig, certify
from lipref.layers import AvgPool2d, Flatten, Linear, ReLU, Sequential
from lipref.models import build_model, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
torch = pytest.importorskip("torch", reason="the torch extra: pip install -e '.[torch]'")


def _pool_shapes():
    return st.tuples(st.integers(1, 3), st.integers(2, 7), st.integers(2, 7), st.integers(1, 3),
                     st.integers(1, 3)).flatmap(
        lambda t: st.tuples(st.just(t), st.integers(0, min(t[3] // 2, max(0, min(t[1], t[2]) + t[3] // 2 - t[3])))))


@settings(max_examples=30, deadline=None)
@given(case=_pool_shapes(), seed=st.integers(0, 2 ** 32 - 1))
def test_forward_is_torchs_avg_pool(xp, case, seed):
    (c, h, w, k, s), p = case
    if k > min(h, w) + 2 * p:
        return
    layer = AvgPool2d((c, h, w), k, s, p)
    layer.init_params(xp, xp.float64, None)
    x = numpy.random.default_rng(seed).standard_normal((2, c, h, w))
    expected = torch.nn.functional.avg_pool2d(torch.as_tensor(x), k, s, p, count_include_pad=True).numpy()
    got = to_host(layer(xp.asarray(x), {}))
    assert got.shape == expected.shape == (2,) + layer.out_shape
    numpy.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)


def test_nothing_to_train_and_a_file_round_trip():
    import array_api_compat.numpy as xp
    model = build_model("conv:4:3:1:1,avgpool:2:2:0,fc:8", (1, 6, 6), 3, xp, xp.float32, numpy.random.default_rng(0))
    assert [layer.kind for layer in model.layers][2] == "avgpool2d"
    assert not any(name.startswith("2.") for name in model.parameters())
    kernel, bias = model.layers[2].linear_part({})
    assert bias is None and kernel.dtype == xp.float32 and float(kernel[1, 1, 0, 0]) == 0.25
    assert float(kernel[0, 1, 0, 0]) == 0.0
    save_model("/tmp/lipref-avgpool-test.npz", model)
    again = load_model("/tmp/lipref-avgpool-test.npz", xp, xp.float64)
    x = numpy.random.default_rng(1).uniform(size=(3, 1, 6, 6))
    assert again.layers[2].linear_part({})[0].dtype == xp.float64  # placed in the loaded model's dtype
    numpy.testing.assert_allclose(to_host(again(x, record=False)), to_host(model(x.astype(numpy.float32),
                                  record=False)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (2, 1, 0), (3, 1, 1), (3, 2, 1), (2, 1, 1)])
def test_norm_estimate_below_and_sound_bound_above_the_exact_norm(xp, k, s, p):
    layer = AvgPool2d((2, 5, 5), k, s, p)
    model = Sequential([layer, Flatten(layer.out_shape), Linear(layer.out_shape[0] * layer.out_shape[1] *
                                                                layer.out_shape[2], 2)])
    model.init_params(xp, xp.float64, numpy.random.default_rng(0))
    kernel = to_host(layer.linear_part({})[0])
    matrix = materialise(layer, kernel, numpy.ones(layer.out_shape), numpy.ones(layer.in_shape))
    exact = numpy.linalg.norm(matrix, 2)
    estimate = float(to_host(global_norms(model, "fast", 300, numpy.random.default_rng(1)).norms[0]))
    upper = float(to_host(global_norms(model, "sound", 20, numpy.random.default_rng(1)).norms[0]))
    assert estimate <= exact * (1 + 1e-12) and estimate >= exact * (1 - 1e-6)
    assert exact <= upper <= exact * (1 + 1e-6)


def _pixel_pair_model(xp, seed, dtype):
    """A 2-pixel image (1, 1, 2) through a padded 2x2 average pool ((1, 2, 3) outputs: each the
    mean of the pixels its window covers), then Linear, ReLU, Linear: a net whose ball is a disk."""
    rng = numpy.random.default_rng(seed)
    pool = AvgPool2d((1, 1, 2), 2, 1, 1)
    width = int(rng.integers(2, 7))
    model = Sequential([pool, Flatten(pool.out_shape), Linear(6, width), ReLU((width,)), Linear(width, 3)])
    model.init_params(xp, dtype, rng)
    for layer in model.layers:
        for name, var in layer.params.items():
            scale = 3.0 if name == "weight" else 0.3
            var.value = xp.asarray(rng.normal(0, scale, tuple(var.value.shape)), dtype=dtype)
    return model, rng


@pytest.mark.property  # its @given is built per backend (fewer draws off NumPy), out of conftest's sight
def test_certificates_hold_on_a_dense_grid_of_the_ball(xp):
    """Every certificate and certified radius of a net with a padded average pool holds on a
    dense grid of its ball (the grid of tests/test_certificate_grid.py: a necessary check)."""
    @settings(max_examples=examples(xp, 25, 6), deadline=None)
    @given(seed=st.integers(0, 2 ** 32 - 1), mode=st.sampled_from(["fast", "sound"]),
           eps=st.sampled_from([0.01, 0.05, 0.2, 1.0]))
    def run(seed, mode, eps):
        model, rng = _pixel_pair_model(xp, seed, xp.float64)
        points = rng.uniform(-1, 1, (6, 2))
        res = certify(model, points.reshape(6, 1, 1, 2), numpy.zeros(6, dtype=numpy.int64), eps,
                      CertifyConfig(mode=mode, n_iters=150, pgd_steps=0), seed=seed % 1000)
        twin = float64_twin(model, xp)
        centres, radii, expected = [], [], []
        for i in range(6):
            pred = int(res.predictions[i])
            balls = [eps] if (res.certified_local[i] or res.certified_global[i]) else []
            balls += [r for r in (float(res.radius_local[i]), min(float(res.radius_global[i]), 4 * eps)) if r > 0]
            for r in balls:
                centres.append(points[i])
                radii.append(r)
                expected.append(pred)
        bad = counterexamples(twin, xp, centres, radii, expected, ULP["float64"])
        assert not bad, f"{mode} eps={eps}: the prediction changes inside a certified ball: {bad[:2]}"
    run()


def test_bounds_and_loss_gradients_agree_with_the_torch_reference():
    import array_api_compat.numpy as xp

    from lipref import check as C
    model = build_model("conv:4:3:1:1,avgpool:2:2:0,conv:4:3:1:1,avgpool:3:1:1,fc:8", (1, 8, 8), 3, xp, xp.float64,
                        numpy.random.default_rng(0), activation="clipped_relu")
    x = numpy.random.default_rng(1).uniform(size=(4, 1, 8, 8))
    rows = C.check_against_torch(model, x, numpy.array([0, 1, 2, 0]), 0.1, 30, numpy.random.default_rng(0),
                                 loss_names=("gloro", "bcp", "gloro-bcp"))
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert max(r["max_rel_diff"] for r in rows) < 1e-12


def _cli(*args, cwd):
    return subprocess.run([str(Path(sys.executable).parent / "lipref"), *args], capture_output=True, text=True,
                          cwd=cwd)


def test_onnx_average_pool_imports_certifies_in_both_modes_and_trains(tmp_path):
    """An ONNX AveragePool (torch's export of nn.AvgPool2d) imports as AvgPool2d, certifies fast
    and sound with the CLI, and `lipref train --arch` trains a stack with a pool."""
    pytest.importorskip("onnx", reason="the onnx extra: pip install -e '.[onnx]'")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10))
    path = tmp_path / "pool.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), str(path), dynamo=False)
    out = _cli("import-onnx", str(path), "--out", str(tmp_path / "pool.npz"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = load_model(tmp_path / "pool.npz", __import__("array_api_compat.numpy", fromlist=["x"]), None)
    assert [layer.kind for layer in model.layers][:3] == ["conv2d", "relu", "avgpool2d"]
    x = numpy.random.default_rng(0).uniform(size=(3, 1, 28, 28)).astype(numpy.float32)
    numpy.testing.assert_allclose(to_host(model(x, record=False)), net(torch.as_tensor(x)).detach().numpy(),
                                  rtol=1e-5, atol=1e-6)
    for mode in ("fast", "sound"):
        out = _cli("certify", str(tmp_path / "pool.npz"), "--data", "embedded:test", "--limit", "20", "--eps", "0.1",
                   "--mode", mode, "--seed", "1", "--iters", "20", "--pgd-steps", "10", "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["n"] == 20 and doc["soundness_violations"] == []
    out = _cli("train", "--out", str(tmp_path / "run"), "--arch", "conv:4:3:2:1,avgpool:2:2:0,fc:16", "--limit", "128",
               "--eval-limit", "20", "--epochs", "1", "--warmup", "0", "--ramp", "1", "--batch-size", "64", "--quiet",
               "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    trained = load_model(tmp_path / "run" / "model.npz", __import__("array_api_compat.numpy", fromlist=["x"]), None)
    assert "avgpool2d" in [layer.kind for layer in trained.layers]


def test_onnx_average_pool_that_is_no_linear_map_is_refused(tmp_path):
    """count_include_pad 0 with padding (border windows divide by fewer inputs) or ceil_mode:
    one line naming the node, exit 2."""
    onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install -e '.[onnx]'")
    from onnx import TensorProto, helper
    for attrs, why in (({"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}, "count_include_pad"),
                       ({"kernel_shape": [2, 2], "ceil_mode": 1}, "ceil_mode")):
        w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4 * 3 * 3], numpy.ones(3 * 36, dtype=numpy.float32))
        nodes = [helper.make_node("AveragePool", ["x"], ["p"], name="pool", **attrs),
                 helper.make_node("Flatten", ["p"], ["f"], name="flat"),
                 helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
        path = tmp_path / "bad.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        out = _cli("import-onnx", str(path), "--out", str(tmp_path / "bad.npz"), cwd=tmp_path)
        assert out.returncode == 2 and "pool" in out.stderr and why in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
