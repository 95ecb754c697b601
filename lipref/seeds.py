"""Random draws derived from (seed, sample index, purpose), never from a batch, shard or worker.

`certify` and `bound` draw a power-iteration or Lanczos start and PGD's random starts for
every sample. Each sample gets its own NumPy generator, seeded with [seed, index, purpose],
so a sample's draws are the same whichever batch, shard or process computes it: results do
not depend on the batch size, and a run sharded over a cluster equals a single-process run
bit for bit. The global norms' draws (one start per layer, not per sample) come from
[seed, GLOBAL] and are made once per run.
"""
from .backend import host
from .errors import InputError

# purpose tags: arbitrary distinct constants, one stream per kind of draw
GLOBAL = 0x61_0BA1  # the global power iteration's starts, or sound mode's Gram estimates
BOUNDS = 0x10_CA1  # each sample's local power-iteration (fast) or Lanczos (sound) starts
PGD = 0x9_6D  # each sample's PGD starts, one per restart


def check_seed(seed):
    """The seed as an int >= 0 (NumPy's SeedSequence takes no negative entropy)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"the seed must be an integer >= 0, got {seed!r}")
    return seed


def seed_from(rng):
    """A run seed drawn from a caller's Generator (for callers that pass rng, not seed)."""
    return int(rng.integers(0, 2 ** 63))


def global_rng(seed):
    """The generator of a run's global, once-per-run draws."""
    return host.random.default_rng([check_seed(seed), GLOBAL])


class SampleStreams:
    """A stand-in for a NumPy Generator over a batch: a draw of shape (n, ...) takes row k
    from sample `indices[k]`'s own generator, so each sample's draws are the same in any
    batch. Only the draws the engine makes are offered: standard_normal and uniform."""

    def __init__(self, seed, indices, purpose):
        seed = check_seed(seed)
        self.generators = [host.random.default_rng([seed, int(i), purpose]) for i in indices]

    def _rows(self, n):
        if n != len(self.generators):  # a draw not per sample (e.g. a global start) must not come from here
            raise ValueError(f"per-sample streams of {len(self.generators)} samples asked for {n} rows")
        return self.generators

    def standard_normal(self, shape):
        shape = tuple(shape)
        rows = [g.standard_normal(shape[1:]) for g in self._rows(shape[0])]
        return host.stack(rows) if rows else host.zeros(shape)

    def uniform(self, low=0.0, high=1.0, size=None):
        n = size if isinstance(size, int) else size[0]
        rest = () if isinstance(size, int) else tuple(size[1:])
        rows = [g.uniform(low, high, rest) for g in self._rows(n)]
        return host.stack(rows) if rows else host.zeros((n,) + rest)


def sample_streams(seed, start, stop, purpose):
    """SampleStreams for the samples start .. stop - 1 of a run (indices into the whole dataset)."""
    return SampleStreams(seed, range(start, stop), purpose)
