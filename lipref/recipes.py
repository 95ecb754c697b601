"""The paper's training settings as presets of `lipref train --recipe NAME`.

Each recipe is the official code's setting for one model (yjhuangcd/local-lipschitz: the
training scripts' defaults with the options of its run_job.sh), written as lipref's option
names. Where lipref computes the same thing differently it is said here:
- the ball-and-box worst case is solved exactly (the official code runs `opt_iter`
  rounds of an iterative clipping; 10 for MNIST, 1 for CIFAR and TinyImageNet);
- eps, kappa and the learning rate move within each epoch (`schedules.py`); the official
  code steps the learning rate once per epoch, from epoch `epochs // 2 + 25` on;
- TinyImageNet ran on 4 GPUs with 32 images each: one batch of 128 here.
Any option given on the command line overrides the recipe's value. A recipe run for another
number of epochs (`--epochs 2` on a 300-epoch recipe) has its schedule scaled with them:
warm-up, ramp and decay start are the recipe's fractions of the run (`scaled_schedule`), so
that eps still reaches its end value, instead of a 150-epoch ramp in a 2-epoch run.
"""
from .errors import InputError

CIFAR_EPS_EVAL = 36 / 255

_CIFAR = {
    "data_spec": "cifar10:train", "loss": "bcp", "kappa_start": 1.0, "kappa_end": 0.0, "n_iters": 2,
    "eps_train": 0.1551, "eps_eval": CIFAR_EPS_EVAL, "batch_size": 256, "epochs": 800, "warmup": 20.0,
    "ramp": 400.0, "lr": 1e-3, "lr_end": 1e-6, "decay_start": 425.0, "crop_padding": 4, "flip": True,
    "eval_iters": 100, "activation": "clipped_relu",
}

RECIPES = {
    "mnist-4c3f": {
        "data_spec": "mnist:train", "arch": "4c3f", "activation": "clipped_relu", "threshold_init": 1.0,
        "loss": "gloro-bcp", "kappa_start": 0.0, "kappa_end": 0.0, "n_iters": 5, "eps_train": 1.75,
        "eps_eval": 1.58, "batch_size": 256, "epochs": 300, "warmup": 0.0, "ramp": 150.0, "lr": 1e-3,
        "lr_end": 5e-6, "decay_start": 175.0, "crop_padding": 0, "flip": False, "eval_iters": 100,
    },
    # the official 4C3F CIFAR model ignores --init: its thresholds start at 1
    "cifar10-4c3f": dict(_CIFAR, arch="4c3f", threshold_init=1.0),
    "cifar10-6c2f": dict(_CIFAR, arch="6c2f", threshold_init=2.0),
    "cifar10-6c2f-maxmin": dict(
        _CIFAR, arch="6c2f", activation="maxmin",
        layer_inits="0.1:-0.1,0.1:-0.15,0.15:-0.15,0.15:-0.15,0.2:-0.2,0.3:-0.3,1.2:-1.2"),
    "tinyimagenet-8c2f": {
        "data_spec": "tinyimagenet:train", "arch": "8c2f", "activation": "clipped_relu", "threshold_init": 1.0,
        "loss": "bcp", "kappa_start": 1.0, "kappa_end": 0.0, "n_iters": 1, "eps_train": 0.16, "eps_eval": 0.141,
        "batch_size": 128, "epochs": 250, "warmup": 0.0, "ramp": 125.0, "lr": 2.5e-4, "lr_end": 5e-6,
        "decay_start": 150.0, "crop_padding": 4, "flip": True, "sparsity": 0.01, "saturation_weight": 0.1,
        "eval_iters": 100,
    },
}

# after training, the paper evaluates with these (`lipref certify` options)
EVALUATION = {"mnist-4c3f": "--eps 1.58", "cifar10-4c3f": "--eps 0.1412", "cifar10-6c2f": "--eps 0.1412",
              "cifar10-6c2f-maxmin": "--eps 0.1412", "tinyimagenet-8c2f": "--eps 0.141"}
EVALUATION_OPTIONS = "--iters 2000 --pgd-steps 100"


def recipe(name):
    """The option values of recipe `name` (a copy)."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])


# the options counted in epochs, which a run of other length scales (best_from is not in a recipe)
EPOCH_OPTIONS = ("warmup", "ramp", "decay_start")


def scaled_schedule(values, epochs, given=()):
    """{option: (recipe's value, scaled value)} for the EPOCH_OPTIONS of recipe `values` not in
    `given` (and not 0), scaled by epochs / the recipe's epochs (empty when the epochs are the
    recipe's)."""
    if epochs == values["epochs"]:
        return {}
    factor = epochs / values["epochs"]
    return {k: (values[k], values[k] * factor) for k in EPOCH_OPTIONS
            if k not in given and values.get(k) not in (None, 0)}


def apply_recipe(name, options, given):
    """(options with the recipe's values for every option not in `given`, the values used, the
    values scaled: {option: (recipe's, used)} when `given` sets other epochs than the recipe's)."""
    values = recipe(name)
    used = {k: v for k, v in values.items() if k not in given}
    epochs = options["epochs"] if "epochs" in given else values["epochs"]
    scaled = scaled_schedule(values, epochs, given)
    used.update({k: new for k, (_, new) in scaled.items()})
    return dict(options, **used), used, scaled
