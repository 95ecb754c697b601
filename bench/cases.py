"""The benchmark cases of bench/suite.py: lipref against torch on identical weights and inputs.

Each `case_NAME(bench)` takes a `suite.Bench` (implementation, backend, sizes, repeats) and
returns a dict with "seconds" (the median) and what identifies the work; the cases that
compute a number both sides must agree on also return it (a radius, a loss, a norm), so a
run checks the two programs compute the same thing. Inputs are drawn on the host from
seeded NumPy generators and then moved to the backend, so every backend sees the same
numbers. A library module of bench/ (suite.py's command runs it; ab_taps.py and gpu.py
reuse it).
"""
import numpy

EPS = 1.58  # the paper's MNIST radius


def conv_shapes(arch, in_shape):
    """((C, H, W), out_channels, k, stride, padding) of every conv layer of `arch`."""
    from lipref.models import ARCHITECTURES
    from lipref.primitives import conv_output_hw
    c, h, w = in_shape
    for o, k, s, p in ARCHITECTURES[arch][0]:
        yield (c, h, w), o, k, s, p
        h, w = conv_output_hw(h, w, k, k, s, p)
        c = o


def host_model(arch, in_shape, dtype="float32"):
    """The architecture with the paper's initialisation on the host (seed 0): torch's side
    converts it (to_torch), lipref's side rebuilds it on its backend (`model_on`)."""
    import array_api_compat.numpy as xp

    from lipref.models import build_model
    return build_model(arch, in_shape, 10, xp, getattr(xp, dtype), numpy.random.default_rng(0))


def model_on(bench, arch, in_shape, dtype="float32"):
    """The same model as `host_model`, on lipref's backend (the same draws, moved)."""
    from lipref.models import build_model
    xp = bench.xp
    return build_model(arch, in_shape, 10, xp, getattr(xp, dtype), numpy.random.default_rng(0))


def torch_net(bench, model, dtype_name="float32"):
    """`model` (a host model) as a torch nn.Sequential on the torch device, with its shapes."""
    import torch

    from lipref.reference.torch_reference import input_shapes, to_torch
    net = to_torch(model, getattr(torch, dtype_name)).to(bench.torch_device)
    return net, input_shapes(net, model.input_shape)


def start_vectors(model, batch, rng, dtype=numpy.float32):
    """Host start vectors: ({affine layer: (batch, ...)}, {affine layer: (1, ...)})."""
    local, glob = {}, {}
    for i, layer in enumerate(model.layers[:-1]):
        if layer.is_affine:
            local[i] = rng.standard_normal((batch,) + tuple(layer.in_shape)).astype(dtype)
            glob[i] = rng.standard_normal((1,) + tuple(layer.in_shape)).astype(dtype)
    return local, glob


def moved(bench, vectors):
    """{key: host array} on the implementation's backend (lipref's arrays or torch tensors)."""
    put = bench.tensor if bench.impl == "torch" else bench.array
    return {k: put(v) for k, v in vectors.items()}


def host_values(a):
    """A host NumPy copy of a lipref array or a torch tensor."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    from lipref.backend import to_host
    return to_host(a)


# ------------------------------------------------------------------------------ layers

def case_matmul(bench):
    n = bench.size["matmul_n"]
    rng = numpy.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=numpy.float32) for _ in range(2))
    put = bench.tensor if bench.impl == "torch" else bench.array
    da, db = put(a), put(b)
    t = bench.seconds(lambda: da @ db)
    return {"seconds": t, "n": n, "gflops": 2 * n ** 3 / t / 1e9}


def conv_data(batch, c, h, w, o, k, s, p):
    """Host (x, weight, bias, upstream gradient) of one conv layer, seeded by its shape."""
    from lipref.primitives import conv_output_hw
    rng = numpy.random.default_rng([c, h, o, k, s])
    x = rng.standard_normal((batch, c, h, w), dtype=numpy.float32)
    wt = rng.standard_normal((o, c, k, k), dtype=numpy.float32) * numpy.float32(0.1)
    oh, ow = conv_output_hw(h, w, k, k, s, p)
    g = rng.standard_normal((batch, o, oh, ow), dtype=numpy.float32)
    return x, wt, numpy.zeros(o, dtype=numpy.float32), g


def lipref_conv_step(bench, x, wt, b, g, s, p):
    """conv2d forward, then its vector-Jacobian products in x and W (lipref's primitives)."""
    from lipref import primitives as P
    x, wt, b, g = (bench.array(a) for a in (x, wt, b, g))
    vx, vw = P.conv2d.vjps[0], P.conv2d.vjps[1]

    def step():
        y = P.conv2d.forward(x, wt, b, s, p)
        vx(g, y, x, wt, b, s, p)
        vw(g, y, x, wt, b, s, p)
    return step


def torch_conv_step(bench, x, wt, b, g, s, p):
    """torch.nn.functional.conv2d forward, then autograd backward (gradients of x and W)."""
    import torch
    tx, tw, tb, tg = (bench.tensor(a) for a in (x, wt, b, g))

    def step():
        xx, ww = tx.detach().requires_grad_(True), tw.detach().requires_grad_(True)
        torch.nn.functional.conv2d(xx, ww, tb, stride=s, padding=p).backward(tg)
    return step


def conv_case(bench, arch, in_shape):
    """Forward + backward (dx, dW) of every conv layer of `arch`, NCHW, float32."""
    batch = bench.size["layer_batch"]
    make_step = torch_conv_step if bench.impl == "torch" else lipref_conv_step
    total, flops, per_layer = 0.0, 0.0, []
    for (c, h, w), o, k, s, p in conv_shapes(arch, in_shape):
        x, wt, b, g = conv_data(batch, c, h, w, o, k, s, p)
        t = bench.seconds(make_step(bench, x, wt, b, g, s, p))
        f = 3 * 2.0 * g.size * c * k * k  # forward, dx and dW: 2 N O OH OW C k^2 each
        per_layer.append({"in": [batch, c, h, w], "out_channels": o, "k": k, "stride": s, "seconds": t,
                          "gflops": f / t / 1e9})
        total += t
        flops += f
    return {"seconds": total, "batch": batch, "gflops": flops / total / 1e9, "layers": per_layer}


def case_conv_4c3f_mnist(bench):
    return conv_case(bench, "4c3f", (1, 28, 28))


def case_conv_4c3f_cifar(bench):
    return conv_case(bench, "4c3f", (3, 32, 32))


def case_conv_6c2f_cifar(bench):
    return conv_case(bench, "6c2f", (3, 32, 32))


def case_linear_4c3f_mnist(bench):
    """The three fc layers of 4c3f, forward and the gradients in x and W."""
    batch = bench.size["layer_batch"]
    shapes = [(3136, 512), (512, 512), (512, 10)]
    rng = numpy.random.default_rng(0)
    host = [(rng.standard_normal((batch, i), dtype=numpy.float32), rng.standard_normal((o, i), dtype=numpy.float32),
             numpy.zeros(o, dtype=numpy.float32), rng.standard_normal((batch, o), dtype=numpy.float32))
            for i, o in shapes]
    if bench.impl == "torch":
        import torch
        data = [tuple(bench.tensor(a) for a in d) for d in host]

        def step():
            for x, w, b, g in data:
                xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
                torch.nn.functional.linear(xx, ww, b).backward(g)
    else:
        from lipref import primitives as P
        data = [tuple(bench.array(a) for a in d) for d in host]

        def step():
            for x, w, b, g in data:
                y = P.linear.forward(x, w, b)
                for vjp in P.linear.vjps[:2]:
                    vjp(g, y, x, w, b)
    t = bench.seconds(step)
    flops = sum(3 * 2.0 * batch * i * o for i, o in shapes)
    return {"seconds": t, "batch": batch, "gflops": flops / t / 1e9}
