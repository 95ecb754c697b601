"""The bound cases of bench/suite.py: global and local bounds, a training step and sound
certification, lipref against the torch reference (lipref/reference/, the same algorithm
written in torch, also used by `lipref check`). See bench/cases.py for the conventions.

The local bound and the training step run as the CLI runs them: on the CPU in blocks of 32
samples in threads (`backend.map_in_threads`), on a GPU the batch whole.
"""
import numpy

from bench.cases import EPS, host_model, host_values, model_on, moved, start_vectors, torch_net

MNIST = (1, 28, 28)


def case_global_bound_4c3f(bench):
    """Power iteration on every full layer operator (global_iters steps), from given starts."""
    n_iters = bench.size["global_iters"]
    model = host_model("4c3f", MNIST)
    _, gv = start_vectors(model, 1, numpy.random.default_rng(1))
    if bench.impl == "torch":
        import torch

        from lipref.reference.torch_reference import global_norms
        net, shapes = torch_net(bench, model)
        tg = moved(bench, gv)

        def run():
            with torch.no_grad():
                return list(global_norms(net, shapes, tg, n_iters)[0].values())
    else:
        from lipref.bounds import global_norms
        model = model_on(bench, "4c3f", MNIST)
        lg = moved(bench, gv)

        def run():
            return global_norms(model, "fast", n_iters, None, lg).norms
    norms = [float(host_values(g)) for g in run()]
    return {"seconds": bench.seconds(run), "n_iters": n_iters, "global_lipschitz": float(numpy.prod(norms))}


def _batch(model, batch, seed):
    """Host inputs in [0, 1), labels and start vectors for a batch."""
    rng = numpy.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch,) + tuple(model.input_shape)).astype(numpy.float32)
    labels = rng.integers(0, 10, batch)
    local, glob = start_vectors(model, batch, rng)
    return x, labels, local, glob


def case_local_bound_4c3f(bench):
    """Interval + ball bounds, masks and masked power iteration (local_iters steps)."""
    batch, n_iters = bench.size["local_batch"], bench.size["local_iters"]
    model = host_model("4c3f", MNIST)
    x, _, vectors, gv = _batch(model, batch, 2)
    if bench.impl == "torch":
        import torch

        from lipref.reference.torch_reference import network_bounds
        net, shapes = torch_net(bench, model)
        tx, tv, tg = bench.tensor(x), moved(bench, vectors), moved(bench, gv)

        def run():
            with torch.no_grad():
                return network_bounds(net, tx, EPS, n_iters, tv, tg, "local", shapes).radius
    else:
        from lipref.bounds import BoundOptions, global_norms, network_bounds
        model = model_on(bench, "4c3f", MNIST)
        xv, lv, glv = bench.array(x), moved(bench, vectors), moved(bench, gv)

        def run():
            norms = global_norms(model, "fast", n_iters, None, glv)
            return network_bounds(model, xv, EPS, BoundOptions("local", "fast", n_iters), norms, local_vectors=lv).radius
    radius = host_values(run())
    return {"seconds": bench.seconds(run), "batch": batch, "n_iters": n_iters,
            "median_radius": float(numpy.median(radius))}


def case_train_step_4c3f(bench):
    """One step of local-bound GloRo training: walk + loss, backward, Adam (lr 1e-4)."""
    return _train_step_case(bench, "gloro", bench.size["train_batch"], bench.size["train_iters"])


def case_train_step_4c3f_bcp(bench):
    """One step of local-bound training with the gloro-bcp loss (the official MNIST recipe's
    loss: GloRo's form, its bottom logit from the ball-and-box last layer), 5 power
    iterations, batch 256: walk + loss, backward, Adam (lr 1e-4)."""
    return _train_step_case(bench, "gloro-bcp", bench.size["bcp_train_batch"], bench.size["bcp_train_iters"])


def case_official_step_4c3f(bench):
    """The official code's training step against lipref's, on the same model, batch and
    settings as train_step_4c3f_bcp (gloro-bcp, 5 power iterations, batch 256). "torch":
    the official step's structure rebuilt in torch (bench/official_step.py: power
    iterations on the autograd graph, BCP on (batch, classes, classes, width) tensors);
    "lipref": lipref's step, as in train_step_4c3f_bcp. The two losses differ by design
    (the official radius is the local bound alone, its BCP one clip-and-rescale pass)."""
    batch, n_iters = bench.size["bcp_train_batch"], bench.size["bcp_train_iters"]
    if bench.impl != "torch":
        result = _train_step_case(bench, "gloro-bcp", batch, n_iters)
        result["structure"] = "lipref"
        return result
    import torch

    from bench.official_step import OfficialStep
    model = host_model("4c3f", MNIST)
    x, labels, _, _ = _batch(model, batch, 3)
    net, _ = torch_net(bench, model)
    step = OfficialStep(net, bench.tensor(x), EPS, n_iters, numpy.random.default_rng(5))
    tx, ty, index = bench.tensor(x), bench.tensor(labels), torch.arange(batch)

    def run():
        return step(tx, ty, index)[0]
    first = run()
    return {"seconds": bench.seconds(run), "batch": batch, "n_iters": n_iters, "loss": "gloro-bcp",
            "first_loss": first, "structure": "official"}


def _train_step_case(bench, loss, batch, n_iters):
    model = host_model("4c3f", MNIST)
    x, labels, vectors, gv = _batch(model, batch, 3)
    run = (_torch_train_step if bench.impl == "torch" else _lipref_train_step)(bench, model, x, labels, vectors, gv,
                                                                               n_iters, loss)
    first = run()
    return {"seconds": bench.seconds(run), "batch": batch, "n_iters": n_iters, "loss": loss, "first_loss": first}


def _torch_train_step(bench, model, x, labels, vectors, gv, n_iters, loss_kind):
    import torch

    from lipref.reference.torch_margins import robust_loss
    from lipref.reference.torch_reference import network_bounds
    net, shapes = torch_net(bench, model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    tx, ty, tv, tg = bench.tensor(x), bench.tensor(labels), moved(bench, vectors), moved(bench, gv)

    def run():
        opt.zero_grad()
        b = network_bounds(net, tx, EPS, n_iters, tv, tg, "local", shapes)
        loss = robust_loss(loss_kind, b, net[-1].weight, ty)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return run


def _lipref_train_step(bench, _host_model, x, labels, vectors, gv, n_iters, loss_kind):
    """As `lipref train` computes a step: the global iteration once, then the blocks."""
    from lipref import losses
    from lipref.bounds import BoundOptions, global_norms, network_bounds
    from lipref.bounds.certificate import one_hot
    from lipref.optim import Adam
    from lipref.training import blocked_gradients
    xp = bench.xp
    model = model_on(bench, "4c3f", MNIST)
    params = model.parameters()
    names = list(params)
    opt = Adam(params, lr=1e-4)
    xv, onehot = bench.array(x), one_hot(bench.array(labels), 10, xp.float32)
    lv, glv = moved(bench, vectors), moved(bench, gv)
    last = model.layers[-1].params["weight"]
    options = BoundOptions("local", "fast", n_iters, record=True)

    def run():
        norms = global_norms(model, "fast", n_iters, None, glv)

        def block_loss(s):
            b = network_bounds(model, xv[s, ...], EPS, options, norms, local_vectors={k: v[s, ...] for k, v in lv.items()})
            return losses.ROBUST[loss_kind](b, last, onehot[s, ...]), None
        value, grads, _ = blocked_gradients(xp, x.shape[0], [params[k] for k in names], block_loss)
        opt.step(dict(zip(names, grads)))
        return float(host_values(value))
    return run


def case_sound_certify_4c3f(bench):
    """Certification of one batch, float64. lipref: sound mode (`certify`, upper bounds
    everywhere: Lanczos with the Kuczynski-Wozniakowski bound, the certified global norms
    computed once before, timed apart as set-up). torch: the reference's local bound with
    pi_iters power-iteration steps (the paper's evaluation, estimates, not bounds) and the
    ball-and-box certificate. The sound bounds are upper bounds, so lipref's median bound
    is never below torch's estimate."""
    arch, batch = bench.size["sound_arch"], bench.size["sound_batch"]
    model = host_model(arch, MNIST, "float64")
    rng = numpy.random.default_rng(4)
    x = rng.uniform(0, 1, (batch,) + MNIST)
    labels = rng.integers(0, 10, batch)
    if bench.impl == "torch":
        run, out = _torch_estimate(bench, model, x, labels, rng)
    else:
        run, out = _lipref_sound(bench, arch, x, labels)
    bounds, certified = run()
    out.update({"seconds": bench.seconds(run), "arch": arch, "batch": batch, "eps": EPS,
                "median_lipschitz": float(numpy.median(bounds)), "certified": float(numpy.mean(certified))})
    return out


def _lipref_sound(bench, arch, x, labels):
    import time

    from lipref.bounds.certificates import GRAM_LIMIT
    from lipref.certification import CertifyConfig, certify
    steps = bench.size["lanczos_steps"]
    gram_limit = GRAM_LIMIT if bench.size["gram_limit"] is None else bench.size["gram_limit"]
    model = model_on(bench, arch, MNIST, "float64")
    start = time.perf_counter()
    config = CertifyConfig(mode="sound", n_iters=steps, gram_limit=gram_limit, pgd_steps=0, batch_size=x.shape[0])
    norms = config.global_norms(model, 0)
    bench.sync()
    setup = time.perf_counter() - start

    def run():
        result = certify(model, x, labels, EPS, config, seed=0, norms=norms)
        return result.local_bound, result.certified_local
    return run, {"setup_seconds": setup, "lanczos_steps": steps, "gram_limit": gram_limit}


def _torch_estimate(bench, model, x, labels, rng):
    import torch

    from lipref.reference.torch_margins import bcp_worst_logits
    from lipref.reference.torch_reference import network_bounds
    n_iters = bench.size["pi_iters"]
    net, shapes = torch_net(bench, model, "float64")
    vectors, gv = start_vectors(model, x.shape[0], rng, numpy.float64)
    tx, ty, tv, tg = bench.tensor(x), bench.tensor(labels), moved(bench, vectors), moved(bench, gv)
    weight = net[-1].weight

    def run():
        with torch.no_grad():
            b = network_bounds(net, tx, EPS, n_iters, tv, tg, "local", shapes)
            worst = bcp_worst_logits(b.logits, weight, ty, b.radius, b.penultimate, b.lower, b.upper)
            own = torch.nn.functional.one_hot(ty, worst.shape[1]).bool()
            rival = worst.masked_fill(own, -torch.inf).amax(dim=1)
            correct = b.logits.argmax(dim=1) == ty
            certified = correct & (rival < b.logits.gather(1, ty[:, None])[:, 0])
        return host_values(b.lipschitz), host_values(certified)
    return run, {"pi_iters": n_iters}
