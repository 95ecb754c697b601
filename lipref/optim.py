"""Adam, with an optional projection after each step (thresholds kept >= 0)."""
from .backend import namespace


class Adam:
    """Adam (Kingma & Ba). `project` names parameters clamped to >= 0 after every step."""

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, project=()):
        self.params = params  # {name: Var}
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.project = tuple(project)
        self.step_count = 0
        self.m = {k: namespace(v.value).zeros_like(v.value) for k, v in params.items()}
        self.v = {k: namespace(v.value).zeros_like(v.value) for k, v in params.items()}

    def step(self, grads):
        """Apply one update from {name: gradient array}."""
        self.step_count += 1
        t = self.step_count
        c1, c2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        for k, var in self.params.items():
            g = grads[k]
            xp = namespace(g)
            self.m[k] = self.beta1 * self.m[k] + (1 - self.beta1) * g
            self.v[k] = self.beta2 * self.v[k] + (1 - self.beta2) * g * g
            var.value = var.value - self.lr * (self.m[k] / c1) / (xp.sqrt(self.v[k] / c2) + self.eps)
            if k in self.project:
                var.value = xp.maximum(var.value, xp.zeros_like(var.value))

    def state(self):
        """{name: array} of the moments plus the step count (for checkpoints)."""
        out = {f"adam.m.{k}": v for k, v in self.m.items()}
        out.update({f"adam.v.{k}": v for k, v in self.v.items()})
        return out

    def load_state(self, arrays, step_count):
        for k in self.params:
            self.m[k] = arrays[f"adam.m.{k}"]
            self.v[k] = arrays[f"adam.v.{k}"]
        self.step_count = int(step_count)
