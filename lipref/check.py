"""Check lipref's numbers against the independent PyTorch reference (lipref/reference).

`check_against_torch` runs both on the same float64 copy of a model, the same inputs and the
same power-iteration start vectors, and compares, quantity by quantity:

- logits; per activation layer the pre-activation box and both masks (rows of the previous
  affine layer, outputs = columns of the next), which must be identical; per affine layer
  the local norm; the global and the local Lipschitz bound; GloRo and BCP worst-case logits
  (lipref without a tape, the path certification takes);
- the GloRo loss (cross-entropy over [logits, bottom logit], true label) and its gradient
  with respect to every parameter: lipref's tape `grad` against torch autograd (lipref with
  record=True, the path training takes); optionally the same for the BCP loss.

Each result is a dict {"quantity", "max_rel_diff", "tolerance", "ok", "unit"}: for values,
max_rel_diff is max |lipref - torch| / max(max |lipref|, max |torch|) (0 when both are 0) and
unit is "relative" (for a gradient the scale is at least GRADIENT_FLOOR times the largest
entry of that loss's whole gradient, so rounding noise in a zero gradient is not a 100%
difference); for masks it is the number of differing entries and unit is "entries".

Both sides solve the ball-and-box problem of the BCP worst logits exactly (sorted
breakpoints), so BCP quantities get the same tolerance as the rest.
"""
from dataclasses import dataclass

from . import losses
from .backend import get_backend, namespace, to_host
from .backend import host as numpy  # only backend.py imports NumPy itself
from .bounds import BoundOptions, global_norms, margins, network_bounds
from .config import setting
from .errors import InputError
from .layers import Sequential, layer_from_spec
from .tape import grad, value_of
from .torch_import import require_torch

TOLERANCE = 1e-6
LOSSES = ("gloro", "bcp", "gloro-bcp")


@dataclass(frozen=True)
class CheckConfig:
    """The options of `lipref check`, with their defaults, written once."""
    against: str = setting("torch", "The independent implementation to compare with (lipref/reference).",
                           choices=("torch",))
    eps: float = setting(None, "Radius of the l2 ball.")
    n_iters: int = setting(50, "Power-iteration steps (same start vectors on both sides).", minimum=1)
    seed: int = setting(0, "Seed of the start vectors.")
    limit: int = setting(8, "Compare on the first N examples.", minimum=1)


# ---------------------------------------------------------------- set-up

def float64_copy(model):
    """The model with float64 parameters on the host NumPy backend."""
    xp = get_backend("numpy")
    copy = Sequential([layer_from_spec(s) for s in model.spec()])
    copy.load_parameters({name: xp.asarray(to_host(v.value), dtype=xp.float64)
                          for name, v in model.parameters().items()})
    return copy


def start_vectors(model, n, rng):
    """({i: (1,) + in_shape}, {i: (n,) + in_shape}) standard normal start vectors for the
    global and the local power iterations of every affine layer i but the last."""
    global_vectors, local_vectors = {}, {}
    for i, layer in enumerate(model.layers[:-1]):
        if layer.is_affine:
            global_vectors[i] = rng.standard_normal((1,) + layer.in_shape)
            local_vectors[i] = rng.standard_normal((n,) + layer.in_shape)
    return global_vectors, local_vectors


# ---------------------------------------------------------------- lipref's side

def lipref_values(model, x, labels, eps, n_iters, global_vectors, local_vectors):
    """{quantity: host array} from lipref without a tape (certification's path)."""
    xp = get_backend("numpy")
    b = _bounds(model, xp.asarray(x), eps, n_iters, global_vectors, local_vectors, False)
    onehot = margins.one_hot(xp.asarray(labels), model.n_classes, xp.float64)
    last = value_of(_last_weight(model))
    out = {"logits": b.logits, "global bound": b.global_lipschitz, "local bound": b.lipschitz,
           "gloro worst logits": margins.gloro_worst_logits(b.logits, last, onehot, b.radius),
           "bcp worst logits": margins.bcp_worst_logits(b.logits, last, onehot, b.radius, b.penultimate,
                                                        b.lower, b.upper),
           "penultimate box": xp.concat([xp.reshape(b.lower, (-1,)), xp.reshape(b.upper, (-1,))])}
    for act in b.activations:
        out[f"box layer {act.layer_index}"] = xp.concat([xp.reshape(act.lower, (-1,)), xp.reshape(act.upper, (-1,))])
        out[f"row mask layer {act.layer_index}"] = act.row_mask
        out[f"output mask layer {act.layer_index}"] = act.output_mask
    affine = [i for i, layer in enumerate(model.layers[:-1]) if layer.is_affine]
    for i, norm in zip(affine, b.local_norms):
        out[f"local norm layer {i}"] = norm
    return {k: numpy.asarray(to_host(v)) for k, v in out.items()}


def lipref_loss_gradients(model, x, labels, eps, n_iters, global_vectors, local_vectors, loss):
    """{quantity: host array}: the loss value and its gradient for every parameter, by the tape."""
    xp = get_backend("numpy")
    b = _bounds(model, xp.asarray(x), eps, n_iters, global_vectors, local_vectors, True)
    onehot = margins.one_hot(xp.asarray(labels), model.n_classes, xp.float64)
    value = losses.robust_loss(loss, b, _last_weight(model), onehot)
    params = model.parameters()
    grads = grad(value, list(params.values()))
    out = {f"{loss} loss": numpy.asarray(to_host(value_of(value)))}
    for name, g in zip(params, grads):
        out[f"{loss} grad {name}"] = numpy.asarray(to_host(g))
    return out


def _bounds(model, x, eps, n_iters, global_vectors, local_vectors, record):
    """lipref's local bounds with n_iters power-iteration steps from the given start vectors."""
    xp = namespace(x)
    norms = global_norms(model, "fast", n_iters, None, {i: xp.asarray(v) for i, v in global_vectors.items()})
    return network_bounds(model, x, eps, BoundOptions("local", "fast", n_iters, record=record), norms,
                          local_vectors={i: xp.asarray(v) for i, v in local_vectors.items()})


def _last_weight(model):
    last = model.layers[-1]
    return last.linear_part(last.params)[0]


# ---------------------------------------------------------------- torch's side

def torch_values(model, x, labels, eps, n_iters, global_vectors, local_vectors, loss_names):
    """{quantity: host array} from the torch reference: the same quantities as lipref's side."""
    torch = require_torch()
    from .reference import torch_margins as RM
    from .reference import torch_reference as R
    net = R.to_torch(model, torch.float64)
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(labels, dtype=torch.int64)
    b = R.network_bounds(net, xt, eps, n_iters,
                         {i: torch.as_tensor(v) for i, v in local_vectors.items()},
                         {i: torch.as_tensor(v) for i, v in global_vectors.items()})
    last = list(net)[-1].weight
    out = {"logits": b.logits, "global bound": b.global_lipschitz, "local bound": b.lipschitz,
           "gloro worst logits": RM.gloro_worst_logits(b.logits, last, yt, b.radius),
           "bcp worst logits": RM.bcp_worst_logits(b.logits, last, yt, b.radius, b.penultimate, b.lower, b.upper),
           "penultimate box": torch.cat([b.lower.reshape(-1), b.upper.reshape(-1)])}
    for act in b.activations:
        out[f"box layer {act.index}"] = torch.cat([act.lower.reshape(-1), act.upper.reshape(-1)])
        out[f"row mask layer {act.index}"] = act.row_mask
        out[f"output mask layer {act.index}"] = act.output_mask
    affine = [i for i, layer in enumerate(model.layers[:-1]) if layer.is_affine]
    for i, norm in zip(affine, b.local_norms):
        out[f"local norm layer {i}"] = norm
    params = dict(net.named_parameters())
    for loss in loss_names:
        value = RM.robust_loss(loss, b, last, yt)
        grads = torch.autograd.grad(value, list(params.values()), retain_graph=True, allow_unused=True)
        out[f"{loss} loss"] = value
        for (name, p), g in zip(params.items(), grads):
            out[f"{loss} grad {name}"] = torch.zeros_like(p) if g is None else g
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


# ---------------------------------------------------------------- comparison

# A parameter whose gradient is zero up to rounding (say 1.7e-18 on one side, exactly 0 on
# the other, while the same loss's other gradients are about 0.3) is not a 100% difference:
# gradients are compared on a scale of at least GRADIENT_FLOOR times the largest entry of
# that loss's whole gradient (both sides). float64 rounding is about 1e-16 of that scale.
GRADIENT_FLOOR = 1e-8


def relative_difference(a, b, floor=0.0):
    """max |a - b| / max(max |a|, max |b|, floor); 0 when that scale is 0."""
    a, b = numpy.asarray(a, dtype=numpy.float64), numpy.asarray(b, dtype=numpy.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    scale = max(float(numpy.max(numpy.abs(a))), float(numpy.max(numpy.abs(b))), floor)
    diff = float(numpy.max(numpy.abs(a - b)))
    return 0.0 if scale == 0 else diff / scale


def _loss_of_gradient(name):
    """"bcp" for the quantity "bcp grad 7.weight"; None for a quantity that is no gradient."""
    return name.split(" grad ")[0] if " grad " in name else None


def _gradient_floors(ours, theirs):
    """{loss: GRADIENT_FLOOR * the largest gradient entry of that loss, either side}."""
    floors = {}
    for name, a in ours.items():
        b = theirs.get(name)
        loss = _loss_of_gradient(name)
        if loss is None or b is None or a.size == 0 or a.shape != b.shape:
            continue
        top = max(float(numpy.max(numpy.abs(a))), float(numpy.max(numpy.abs(b))))
        floors[loss] = max(floors.get(loss, 0.0), GRADIENT_FLOOR * top)
    return floors


def _row(name, diff, tolerance, unit="relative"):
    return {"quantity": name, "max_rel_diff": diff, "tolerance": tolerance, "ok": bool(diff <= tolerance),
            "unit": unit}


def compare(ours, theirs, tolerance):
    """One result dict per quantity, in `ours`' order (a quantity missing on one side fails)."""
    results = []
    floors = _gradient_floors(ours, theirs)
    for name, a in ours.items():
        b = theirs.get(name)
        fits = b is not None and a.shape == b.shape
        if "mask" in name:
            results.append(_row(name, int(numpy.sum(a != b)) if fits else max(a.size, 1), 0, "entries"))
            continue
        floor = floors.get(_loss_of_gradient(name), 0.0)
        results.append(_row(name, relative_difference(a, b, floor) if fits else float("inf"), tolerance))
    return results


def check_against_torch(model, x, labels, eps, n_iters, rng, tolerance=TOLERANCE, loss_names=("gloro",)):
    """Compare lipref with the torch reference on `model` (any dtype or backend; both run on
    a float64 host copy), inputs x (N, ...) with integer labels (N,), radius eps > 0, n_iters
    power-iteration steps from standard normal start vectors drawn from rng (a NumPy
    Generator). loss_names: losses whose gradients are compared ("gloro", "bcp").
    Returns a list of result dicts (see the module docstring)."""
    unknown = set(loss_names) - set(LOSSES)
    if unknown:
        raise InputError(f"unknown loss {sorted(unknown)}; choose from {', '.join(LOSSES)}")
    model64 = float64_copy(model)
    x64 = numpy.asarray(to_host(x), dtype=numpy.float64)
    labels = numpy.asarray(to_host(labels)).astype(numpy.int64)
    global_vectors, local_vectors = start_vectors(model64, x64.shape[0], rng)
    args = (model64, x64, labels, eps, n_iters, global_vectors, local_vectors)
    ours = lipref_values(*args)
    for loss in loss_names:
        ours.update(lipref_loss_gradients(*args, loss))
    theirs = torch_values(*args, loss_names)
    return compare(ours, theirs, tolerance)
