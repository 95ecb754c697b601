"""The settings of the studies of docs/results.md (bench/study.py trains them, bench/study_report.py
reports them). A setting is TrainConfig's options plus train_limit (the first that many training
images; None: all), n_certify (test images certified, from image 1000 on), and optionally
bounds and seeds (those it is trained with; BOUNDS and SEEDS unless said) and probe (the
selection images the per-layer statistics are measured on after every epoch; PROBE unless
said)."""

SEEDS = (0, 1, 2)
BOUNDS = ("global", "local")
SELECTION = 1000  # test images 0..999 choose best.npz; certification uses the images after them
PROBE = 200  # selection images 0..199: the per-layer statistics after every epoch

# The MLP study: the official MNIST recipe's loss and shape (GloRo's loss with the
# ball-and-box bottom logit, the robust loss alone from the first step, clipped ReLU with
# threshold 1, 5 power-iteration steps, train eps 1.1x the evaluation eps, no warm-up)
# scaled to 2 cores: a 2-layer MLP, the full Fashion-MNIST training set, 2 epochs. The
# sweeps change one thing each, on the first 8,000 training images for 5 epochs.
BASE = dict(arch="mlp-256-256", activation="clipped_relu", threshold_init=1.0, loss="gloro-bcp", kappa_start=0.0,
            kappa_end=0.0, eps_train=1.75, eps_eval=1.58, batch_size=256, warmup=0.0, n_iters=5, eval_iters=20,
            lr=1e-3, lr_end=1e-4)
SUBSET = dict(BASE, epochs=5, ramp=3.0, train_limit=8_000, n_certify=1000)
MLP = {
    "main": dict(BASE, epochs=2, ramp=1.5, train_limit=None, n_certify=2000),
    "subset": SUBSET,
    "subset-relu": dict(SUBSET, activation="relu"),
    "subset-eps0.5": dict(SUBSET, eps_train=0.55, eps_eval=0.5),
    "subset-gloro": dict(SUBSET, loss="gloro"),
    "subset-narrow": dict(SUBSET, arch="mlp-64-64"),
}
MLP_QUICK = {"quick": dict(BASE, epochs=2, ramp=1.0, train_limit=300, n_certify=100, arch="mlp-32", eval_iters=5)}

# The conv study: the same recipe on the paper's 4C3F with every width halved (4c3f-half:
# conv 16, 16, 32, 32 channels, fc 256, 256), what 2 cores allow. conv-main: the full
# training set for 1 epoch (235 steps), eps ramped over its first half, both bounds, 3
# seeds (in the exploration, global-bound training certified nothing in its first 130-150
# steps with any ramp, local-bound training about 20% after 96). The sweeps change one thing
# each against
# conv-subset (the first 8,000 training images, 4 epochs, ramp 2, 500 certified images,
# seed 0): the sparsity loss (TinyImageNet's weight 0.01 with c = 0.1, and 0.1; with weight
# 1 the exploration's network became constant on every ball, clean accuracy 0.10), plain
# ReLU, clamped MaxMin, a smaller eps. They
# ask whether the local certificate itself gets tighter (constant neurons, local/global per
# layer), a property of the local-trained model: the global bound trains only where its
# gain is asked for (conv-subset, conv-subset-eps0.5).
CONV_BASE = dict(BASE, arch="4c3f-half")
CONV_SUBSET = dict(CONV_BASE, epochs=4, ramp=2.0, train_limit=8_000, n_certify=500, seeds=(0,), bounds=("local",))
CONV = {
    "conv-main": dict(CONV_BASE, epochs=1, ramp=0.5, train_limit=None, n_certify=1000),
    "conv-subset": dict(CONV_SUBSET, bounds=BOUNDS),
    "conv-subset-sparsity0.01": dict(CONV_SUBSET, sparsity=0.01, saturation_weight=0.1),
    "conv-subset-sparsity0.1": dict(CONV_SUBSET, sparsity=0.1, saturation_weight=0.1),
    "conv-subset-relu": dict(CONV_SUBSET, activation="relu"),
    "conv-subset-maxmin": dict(CONV_SUBSET, activation="maxmin"),
    "conv-subset-eps0.5": dict(CONV_SUBSET, eps_train=0.55, eps_eval=0.5, bounds=BOUNDS),
}
CONV_QUICK = {"conv-quick": dict(CONV_BASE, arch="2c2f", epochs=2, ramp=1.0, batch_size=32, train_limit=96,
                                 n_certify=50, eval_iters=5, eval_limit=50, probe=50, sparsity=0.01)}

STUDIES = {"mlp": MLP, "conv": CONV}
QUICK = {"mlp": MLP_QUICK, "conv": CONV_QUICK}
NOT_TRAINING_OPTIONS = ("train_limit", "n_certify", "bounds", "seeds", "probe")


def settings_of(study, quick=False, only=None):
    """{name: setting} of a study (the quick one: tiny data), narrowed to `only` (a comma list)."""
    settings = (QUICK if quick else STUDIES)[study]
    if only:
        unknown = [k for k in only.split(",") if k not in settings]
        if unknown:
            raise SystemExit(f"unknown settings {', '.join(unknown)} of study {study}; known: {', '.join(settings)}")
        settings = {k: settings[k] for k in only.split(",")}
    return settings


def bounds_of(setting):
    return tuple(setting.get("bounds", BOUNDS))


def seeds_of(setting):
    return tuple(setting.get("seeds", SEEDS))


def training_options(setting):
    """The TrainConfig options of a setting."""
    return {k: v for k, v in setting.items() if k not in NOT_TRAINING_OPTIONS}
