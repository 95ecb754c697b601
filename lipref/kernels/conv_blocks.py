"""How the conv kernels work through a batch: blocks of whole samples, mapped in threads.

No kernel is registered here (conv.py, conv_grads.py and winograd.py share these helpers;
winograd.py must not import conv.py, whose kernels would then be registered, and tried,
before its own: see kernels/__init__.py).

Blocking: the column matrix of im2col is kh*kw/stride^2 times larger than the input, and
Winograd's transformed tiles 4 times. Built for a whole batch they leave the cache between
the copy that makes them and the product that reads them, so the batch is processed in
blocks of whole samples whose largest intermediate holds about COLUMN_BLOCK numbers. This
is a loop over blocks (ceil(N / block)), never over single samples or pixels.

Threads: on host NumPy the blocks run in `backend.map_in_threads` (one-thread BLAS in each
thread; inline when the caller is such a thread already, as the bounds' blocks are). A
one-thread product of a block that fits the cache runs at 1.3-2x the rate of a two-thread
product of a large one, which waits for the other core on every call, and the copies and
elementwise passes around the products then run on every core too. The sizes were chosen
by measurement (docs/performance-history.md).
"""
from ..backend import map_in_threads, namespace
from .dense import add_in_place

COLUMN_BLOCK = 2 ** 18  # 1 MiB of float32: a block's intermediates stay in a 2 MiB L2
MIN_BLOCKS = 4  # at least this many blocks where the batch has the samples: every core gets work


def blocks_of(n, per_sample, budget=None):
    """Slices of the batch axis with about `budget` (None: COLUMN_BLOCK) intermediate
    entries each, and at least MIN_BLOCKS of them where n allows. They depend on n and the
    sizes only, never on the thread count, so neither do the results (a weight gradient
    sums its blocks' parts in block order)."""
    budget = COLUMN_BLOCK if budget is None else budget
    size = budget // per_sample if per_sample < budget else 1  # (`max` is a primitive here)
    even = -(-n // MIN_BLOCKS)
    size = even if even < size else size
    return [slice(s, s + size if s + size < n else n) for s in range(0, n, size)]


def map_blocks(xp, fn, blocks):
    """[fn(b) for b in blocks], in block order; in threads on host NumPy (see above)."""
    return map_in_threads(xp, fn, blocks)


def blocked_forward(xp, forward, xt, out_hwc, bias, blocks, relayout=True):
    """(n,) + out_hwc channels-last: forward(block of xt) + bias for each block, the blocks
    mapped by `map_blocks`; each block made `channels_last` first unless relayout is False
    (forms that read the channels' planes). One block: forward's own result (no output
    buffer to copy into)."""
    layout = channels_last if relayout else _as_is
    if len(blocks) == 1:
        y = forward(layout(xt))
        return y if bias is None else add_in_place(y, bias)
    out = xp.empty((xt.shape[0],) + tuple(out_hwc), dtype=xt.dtype)

    def one(b):
        y = forward(layout(xt[b, ...]))
        out[b, ...] = y if bias is None else add_in_place(y, bias)  # the bias while the block is in the cache
    map_blocks(xp, one, blocks)
    return out


def channels_last(block):
    """A channels-last block (n, H, W, C), as an array whose channels are contiguous in
    memory: `block` itself where they are (lipref's own activations and gradients, NCHW
    views of channels-last memory), else a copy. An NCHW array's block is copied in two
    steps, first to a channel-major buffer whose rows are one number longer, then
    transposed from there: transposing straight from NCHW memory reads the C numbers of a
    pixel H*W apart, which for 32x32 images is 4 KiB, one cache set for all of them (9x
    slower here). Memory order is asked of host arrays only (`strides`); elsewhere a block
    is used as it is."""
    strides = getattr(block, "strides", None)
    n, h, w, c = block.shape
    if strides is None or c == 1 or strides[3] == block.itemsize:
        return block
    xp = namespace(block)
    staged = xp.empty((n, c, h, w + 1), dtype=block.dtype)
    staged[..., :w] = xp.permute_dims(block, (0, 3, 1, 2))
    out = xp.empty((n, h, w, c), dtype=block.dtype)
    out[...] = xp.permute_dims(staged[..., :w], (0, 2, 3, 1))
    return out


def _as_is(block):
    return block


def sum_in_order(parts):
    """The blocks' partial sums added in block order (whatever order the threads ran in),
    into the first: each part is an array its block made, never an input."""
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total
