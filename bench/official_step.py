"""The official code's training step, rebuilt in torch for a CPU benchmark (bench/suite.py's
official_step_4c3f). A library module of bench/ (no command of its own).

What it follows. The official code (github yjhuangcd/local-lipschitz) trains with
`Local_bound.train`; this module redoes one iteration of its loop, written here from a
reading of that code (none of it is copied), with the MNIST recipe's settings of
train_mnist.py and utils.argparser: batch 256, `--gloro` (the gloro-bcp loss), sniter
power-iteration steps, opt_iter = 1, Adam. In order, as in `Local_bound.train`:

1. the clean forward pass and its cross-entropy (computed every step, unused by the
   gloro loss);
2. the per-sample singular vectors of every affine layer gathered from the per-sample
   store by the batch's indices (`u_train[ll][idx, :]`), and written back afterwards;
3. `net_Local_Lip.forward`, layer by layer: for a conv or linear layer three products
   (W mu + b, W box centre + b, |W| box radius), the global norm by sniter steps of
   power iteration on a batch of one, warm-started from the previous step's vector and
   left on the autograd graph (`power_iteration_conv_evl`, `power_iteration_evl`, with
   their early exit at a change below 1e-4), the box intersected with the ball's box
   (row norms of W), and the ReLU mask by boolean assignment (`bcp_mask_standrelu`); for
   a ReLU the box and the ball through it; then `local_linear`: sniter steps of masked
   power iteration per sample and layer, ON the autograd graph (the iterates are never
   detached, so the backward pass runs through every step), with the early exit when
   every sample's vector moved less than 1e-3, and sigma = <v, A u>; the local radius is
   eps times the product of the sigmas;
4. `BCP_translation`: the clip-and-rescale of every class pair's direction on
   (batch, classes, classes, width) tensors, one iteration (opt_iter = 1), its while
   condition evaluated as the official loop does; NaN set to 0;
5. `gloro_translation`, the cross-entropy, `zero_grad`, backward, Adam's step.

Where it differs: the CPU instead of CUDA (`.cuda()` calls and the CUDA float type of the
diagonal mask become the CPU's); plain ReLU (the official `standrelu` branch), which is
lipref's 4c3f, where the MNIST recipe's default is the learnable clipped ReLU_x; the
per-sample store holds the batch's samples only and is reset to its random start before
every timed step (in training each sample's vectors are reused once an epoch, after the
weights moved, so a warm start from the step before would be faster than training is);
no data loader, logging or learning-rate schedule. The ReLU_x variant would add the
threshold tensors' work, so this is, if anything, faster than the official step.
"""
import math

import numpy

EPS = 1e-12
GLOBAL_TOL, LOCAL_TOL = 1e-4, 1e-3  # the official power iterations' early exits


def _affine(layer, x, weight, bias):
    import torch.nn.functional as F
    if layer.__class__.__name__ == "Conv2d":
        return F.conv2d(x, weight, bias, stride=layer.stride, padding=layer.padding)
    return F.linear(x, weight, bias)


def _affine_t(layer, y, like):
    """The adjoint of the layer's linear part, shaped like `like` (conv_transpose2d with the
    output padding that restores the input size, as the official code retries)."""
    import torch.nn.functional as F
    if layer.__class__.__name__ != "Conv2d":
        return F.linear(y, layer.weight.t(), None)
    out = F.conv_transpose2d(y, layer.weight, stride=layer.stride, padding=layer.padding)
    if out.shape != like.shape:
        out = F.conv_transpose2d(y, layer.weight, stride=layer.stride, padding=layer.padding, output_padding=1)
    return out


def _norms(t):
    """Per-sample l2 norms, shaped to broadcast against t."""
    flat = t.reshape(t.shape[0], -1).norm(dim=1)
    return flat.reshape((-1,) + (1,) * (t.dim() - 1))


def global_norm(layer, like, n_steps, u):
    """The official global power iteration: batch of one, on the graph, early exit."""
    import torch
    u = torch.randn((1,) + tuple(like.shape[1:])) if u is None else u
    for _ in range(n_steps):
        out = _affine(layer, u, layer.weight, None)
        v = out / (out.norm() + EPS)
        previous = u
        back = _affine_t(layer, v, u)
        u = back / (back.norm() + EPS)
        if (u - previous).norm() < GLOBAL_TOL:
            break
    return (v * _affine(layer, u, layer.weight, None)).reshape(1, -1).sum(1)[0], u


class OfficialStep:
    """One training step of the official code's structure on an nn.Sequential of Conv2d,
    ReLU, Flatten and Linear modules (see the module docstring)."""

    def __init__(self, net, batch, eps, n_iters, rng):
        import torch
        self.net, self.eps, self.n_iters = net, eps, n_iters
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        self.affine = [i for i, m in enumerate(net) if m.__class__.__name__ in ("Conv2d", "Linear")][:-1]
        shapes, h = [], torch.zeros((1,) + batch.shape[1:])
        with torch.no_grad():
            for m in net:
                shapes.append(tuple(h.shape[1:]))
                h = m(h)
        self.start = {i: torch.from_numpy(rng.standard_normal((batch.shape[0],) + shapes[i]).astype(numpy.float32))
                      for i in self.affine}
        self.global_u = {}

    def __call__(self, x, y, index):
        import torch
        import torch.nn.functional as F
        store = {i: u.clone() for i, u in self.start.items()}  # the per-sample store, as at its start
        clean = F.cross_entropy(self.net(x), y)
        local = {i: store[i][index, ...] for i in self.affine}
        loss, local = self._robust_loss(x, y, local)
        for i in self.affine:
            store[i][index, ...] = local[i].clone().detach()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach()), float(clean.detach())

    def _robust_loss(self, x, y, local):
        import torch.nn.functional as F
        logits, centre, radius, box_mid, box_rad, last, local = self._bounds(x, local)
        translation = bcp_translation(centre, radius, box_mid, box_rad, last)
        translation[translation != translation] = 0
        worst = gloro_logits(logits, translation, y)
        _ = (worst.max(1)[1].data != y).float().sum() / x.shape[0]  # the robust error the official step logs
        return F.cross_entropy(worst, y), local

    def _bounds(self, x, local):
        import torch
        net, eps = self.net, self.eps
        mu, box_mid = x.clone(), x
        r = eps * torch.ones(x.shape[0])
        box_rad = eps * torch.ones_like(x)
        masks = {}
        for i, m in enumerate(net):
            kind = m.__class__.__name__
            if i == len(net) - 1:
                radius = eps * math.prod(self._local_norms(masks, local))
                logits = _affine(m, mu, m.weight, m.bias)
                _affine(m, box_mid, m.weight.abs(), None)  # the official's last box product, returned unused
                return logits, mu, radius, box_mid, box_rad, m.weight, local
            if kind in ("Conv2d", "Linear"):
                mu, r, box_mid, box_rad = self._through_affine(m, i, mu, r, box_mid, box_rad)
                mask = torch.ones_like(box_mid)
                mask[box_mid + box_rad <= 0] = 0.0  # bcp_mask_standrelu's D0 = upper bound <= 0
                masks[i] = mask
            elif kind == "ReLU":
                masks[i] = masks[i - 1]
                mu, box_mid, box_rad = _through_relu(mu, r, box_mid, box_rad)
            else:  # Flatten
                masks[i] = masks[i - 1].reshape(mu.shape[0], -1)
                mu, box_mid, box_rad = (t.reshape(t.shape[0], -1) for t in (mu, box_mid, box_rad))

    def _through_affine(self, m, i, mu, r, box_mid, box_rad):
        import torch
        new_mid = _affine(m, box_mid, m.weight, m.bias)
        new_rad = _affine(m, box_rad, m.weight.abs(), None)
        upper, lower = new_mid + new_rad, new_mid - new_rad
        after = _affine(m, mu, m.weight, m.bias)
        p, u = global_norm(m, mu, self.n_iters, self.global_u.get(i))
        self.global_u[i] = u.data
        rows = m.weight.reshape(m.weight.shape[0], -1).norm(2, dim=-1)
        shape = (1, -1) + (1,) * (after.dim() - 2)
        ball = r.reshape((-1,) + (1,) * (after.dim() - 1)) * torch.ones_like(after) * rows.reshape(shape)
        upper, lower = torch.min(upper, after + ball), torch.max(lower, after - ball)
        return after, r * p, (upper + lower) / 2, (upper - lower) / 2

    def _local_norms(self, masks, local):
        """local_linear: masked power iteration per sample on the graph, then sigma."""
        sigmas = []
        for i in self.affine:
            m, u = self.net[i], local[i]
            for step in range(self.n_iters):
                previous = u
                if i > 0:
                    u = u * masks[i - 1]
                out = _affine(m, u, m.weight, None) * masks[i]
                v = out / (_norms(out) + EPS)
                back = _affine_t(m, v, u)
                if i > 0:
                    back = back * masks[i - 1]
                u = back / (_norms(back) + EPS)
                moved = (u - previous).reshape(u.shape[0], -1).norm(dim=1)
                if moved.max() < LOCAL_TOL or step + 1 == self.n_iters:
                    local[i] = u
                    break
            if i > 0:
                u = u * masks[i - 1]
            out = _affine(m, u, m.weight, None) * masks[i]
            sigmas.append((v * out).reshape(v.shape[0], -1).sum(1))
        return sigmas


def _through_relu(mu, r, box_mid, box_rad):
    import torch
    relu = torch.nn.functional.relu
    upper, lower = relu(box_mid + box_rad), relu(box_mid - box_rad)
    shape = (-1,) + (1,) * (mu.dim() - 1)
    upper = torch.min(upper, relu(mu + r.reshape(shape)))
    lower = torch.max(lower, relu(mu - r.reshape(shape)))
    return relu(mu), (upper + lower) / 2, (upper - lower) / 2


def bcp_translation(centre, radius, box_mid, box_rad, weight):
    """BCP_translation's structure with opt_iter = 1: (batch, classes, classes) entries
    (w_i - w_j) . d_ij, d_ij the ball direction clipped to the box and the unclipped part
    rescaled, on (batch, classes, classes, width) tensors."""
    import torch
    import torch.nn.functional as F
    c, h = weight.shape
    b = centre.shape[0]
    eye = torch.eye(c).reshape(1, c, c, 1)
    off_diagonal = ((torch.ones((1, c, c, 1)) - eye) == 1).float()
    diff = (weight.reshape(c, 1, -1).repeat(1, c, 1) - weight.repeat(c, 1, 1)).unsqueeze(0)
    diff_batch = diff.repeat(b, 1, 1, 1)
    _ = (diff + EPS).norm(2, dim=-1, keepdim=True)  # computed by the official code, unused
    r = radius.reshape(b, 1, 1, 1)
    direction = r * F.normalize(diff, p=2, dim=-1)
    norm = off_diagonal * (r + EPS) + EPS
    ub = (box_mid + box_rad - centre).reshape(b, 1, 1, h)
    lb = (box_mid - box_rad - centre).reshape(b, 1, 1, h)
    if ub.min() < 0 or lb.max() > 0:
        ub, lb = ub.clamp(min=0), lb.clamp(max=0)
    below, above = (direction <= lb).float(), (direction >= ub).float()
    before = off_diagonal * direction * below + off_diagonal * direction * above
    after = off_diagonal * lb * below + off_diagonal * ub * above
    original = (off_diagonal * (before + EPS)).norm(2, dim=-1, keepdim=True)
    clipped = (off_diagonal * (after + EPS)).norm(2, dim=-1, keepdim=True)
    r_before = (torch.clamp(norm.abs() ** 2 - original.abs() ** 2, min=0) + EPS + eye).sqrt()
    r_after = (torch.clamp(norm.abs() ** 2 - clipped.abs() ** 2, min=0) + EPS + eye).sqrt()
    inside = ((direction > lb) * (direction < ub)).float()
    new = after + r_after / (r_before + EPS) * off_diagonal * direction * inside
    inner = (diff_batch * new).sum(-1)
    _ = ((off_diagonal * new < lb) + (off_diagonal * new > ub)).sum() > 0  # the while loop's next test
    return inner


def gloro_logits(logits, translation, labels):
    """gloro_translation: [z, max_{j != y} z_j + translation[j, y]]."""
    import torch
    b, c = logits.shape
    onehot = torch.nn.functional.one_hot(labels, c).float()
    delta = translation.bmm(onehot.unsqueeze(2)).reshape(b, c)
    worst = logits + delta * (1 - onehot)
    worst = torch.where(onehot > 0, torch.full_like(worst, -math.inf), worst)  # the true class out of the maximum
    return torch.cat((logits, worst.max(dim=1, keepdim=True).values), dim=1)
