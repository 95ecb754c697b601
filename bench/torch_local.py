"""The local-bound algorithm written in torch, for the benchmarks only (not used by lipref).

Same steps and counts as lipref's `network_bounds(..., bound="local", mode="fast")`:
interval bounds in centre/radius form intersected with ball bounds, masks (ReLU off,
clipped ReLU off or saturated), masked power iteration per sample warm-started from given
vectors, product of masked norms (capped by the global norms), and the GloRo loss. torch's
own autograd differentiates it, so a training step is forward + backward + torch's Adam.
"""
import torch
import torch.nn.functional as F


def layers_from_lipref(model, dtype=torch.float32):
    """[(kind, params as torch tensors requiring grad, layer)] from a lipref Sequential."""
    out = []
    for layer in model.layers:
        params = {k: torch.tensor(__import__("numpy").asarray(v.value), dtype=dtype, requires_grad=True)
                  for k, v in layer.params.items()}
        out.append((layer.kind, params, layer))
    return out


def _affine(kind, layer, x, w, b):
    if kind == "linear":
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, stride=layer.stride, padding=layer.padding)


def _adjoint(kind, layer, u, w):
    if kind == "linear":
        return u @ w
    h, wd = layer.in_shape[1:]
    oh, ow = u.shape[2:]
    k = w.shape[2]
    s, p = layer.stride, layer.padding
    op = (h + 2 * p - k - (oh - 1) * s, wd + 2 * p - k - (ow - 1) * s)
    return F.conv_transpose2d(u, w, stride=s, padding=p, output_padding=op)


def _norms(v):
    return v.flatten(1).norm(dim=1)


def _per_sample(v, like):
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def power_iteration(kind, layer, w, rows, cols, v, n_iters):
    """Masked power iteration (no grad), then ||rows * W(cols * v)|| with grad in W."""
    with torch.no_grad():
        wd = w.detach()
        for _ in range(n_iters):
            u = _affine(kind, layer, v * cols, wd, None) * rows
            v = _adjoint(kind, layer, u, wd) * cols
            v = v / _per_sample(_norms(v).clamp_min(1e-30), v)
    sigma = _norms(_affine(kind, layer, v * cols, w, None) * rows)
    return sigma, v


def local_bounds(layers, x, eps, vectors, global_vectors, n_iters):
    """(logits, radius R per sample, vectors) of the local walk; differentiable."""
    n = x.shape[0]
    lower, upper, h = x - eps, x + eps, x
    lip = torch.ones(n, dtype=x.dtype)
    in_mask = torch.ones_like(x)
    pending = None
    gnorms = []
    new_vectors, new_global = {}, {}
    # global norms (full operators), batch of one
    for i, (kind, p, layer) in enumerate(layers[:-1]):
        if kind in ("linear", "conv2d"):
            v0 = global_vectors[i]
            one = torch.ones((1,) + tuple(layer.out_shape), dtype=x.dtype)
            sigma, v = power_iteration(kind, layer, p["weight"], one, torch.ones_like(v0), v0, n_iters)
            gnorms.append(sigma[0])
            new_global[i] = v
    g_index = 0

    def flush(row_mask):
        nonlocal lip, g_index
        i, kind, layer, w, cols = pending
        rows = row_mask if row_mask is not None else torch.ones((n,) + tuple(layer.out_shape), dtype=x.dtype)
        sigma, v = power_iteration(kind, layer, w, rows, cols, vectors[i], n_iters)
        new_vectors[i] = v
        lip = lip * torch.minimum(sigma, gnorms[g_index])
        g_index += 1

    for i, (kind, p, layer) in enumerate(layers[:-1]):
        if kind in ("linear", "conv2d"):
            if pending is not None:
                flush(None)
            w, b = p["weight"], p["bias"]
            z = _affine(kind, layer, h, w, b)
            mid, rad = (upper + lower) / 2, (upper - lower) / 2
            zc = _affine(kind, layer, mid, w, b)
            zr = _affine(kind, layer, rad, w.abs(), None)
            row = _affine(kind, layer, in_mask, w * w, None).sqrt()
            r = _per_sample(lip * eps, z)
            lower = torch.maximum(zc - zr, z - r * row)
            upper = torch.minimum(zc + zr, z + r * row)
            h = z
            pending = (i, kind, layer, w, in_mask)
        elif kind in ("relu", "clipped_relu"):
            if kind == "relu":
                moving = (upper > 0).to(x.dtype)
                act = F.relu
            else:
                theta = p["threshold"]
                moving = ((upper > 0) & (lower < theta)).to(x.dtype)
                act = (lambda t, th=theta: torch.minimum(F.relu(t), th))
            flush(moving)
            pending = None
            lower, upper, h = act(lower), act(upper), act(h)
            r = _per_sample(lip * eps, h)
            lower, upper = torch.maximum(lower, h - r), torch.minimum(upper, h + r)
            in_mask = moving
        elif kind == "flatten":
            if pending is not None:
                flush(None)
                pending = None
            h, lower, upper, in_mask = h.flatten(1), lower.flatten(1), upper.flatten(1), in_mask.flatten(1)
        else:
            raise TypeError(kind)
    if pending is not None:
        flush(None)
    kind, p, layer = layers[-1]
    logits = F.linear(h, p["weight"], p["bias"])
    return logits, lip * eps, new_vectors, new_global


def gloro_loss(logits, weight, radius, labels):
    w_y = weight[labels]
    diff = weight[None, :, :] - w_y[:, None, :]
    norms = (diff.pow(2).sum(2) + 1e-30).sqrt()
    worst = logits + norms * radius[:, None]
    onehot = F.one_hot(labels, logits.shape[1]).bool()
    bottom = worst.masked_fill(onehot, -1e30).max(dim=1).values
    return F.cross_entropy(torch.cat([logits, bottom[:, None]], dim=1), labels)
