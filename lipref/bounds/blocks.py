"""Blocks of samples and threads: every sample's bounds depend on that sample alone.

Without a tape, `network_bounds` bounds the batch in blocks of samples (backend.sample_blocks),
run in threads (backend.map_in_threads), and merges the blocks' results here. Every random
start vector is drawn first, in the calling thread, in the order a single pass over the
whole batch draws them (layer_norms.py), so the result does not depend on the threads at
all, nor on the blocks beyond rounding.
"""
import dataclasses

from ..backend import map_in_threads, namespace, sample_blocks

PER_SAMPLE = {"per_sample": True}  # field metadata: merged across blocks along the sample axis


def bound_in_blocks(xp, bound_block, n, sample_block, threads):
    """bound_block(slice) over the blocks of n samples, in threads, merged into one result."""
    parts = map_in_threads(xp, bound_block, sample_blocks(xp, n, sample_block), threads)
    return parts[0] if len(parts) == 1 else merge_blocks(parts, xp, threads)


def merge_blocks(parts, xp, threads):
    """One result from those of consecutive blocks: every field marked PER_SAMPLE (of the
    result's dataclass, and of the dataclasses, lists and dicts inside it) is concatenated
    along the sample axis; the others are the first block's. The concatenations run in
    `threads` threads, and an array that several fields share in every block (a ReLU's
    row and output mask) is concatenated once and stays shared."""
    jobs, job_of = [], {}

    def register(arrays):
        key = tuple(id(a) for a in arrays)
        if key not in job_of:
            job_of[key] = len(jobs)
            jobs.append(arrays)

    _merge(parts, register)
    merged = map_in_threads(xp, _stack_blocks, jobs, threads)
    return _merge(parts, lambda arrays: merged[job_of[tuple(id(a) for a in arrays)]])


def _merge(values, leaf):
    """The blocks' values merged (see merge_blocks), leaf(arrays) giving each array's."""
    first = values[0]
    if first is None:
        return None
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: _merge([getattr(v, f.name) for v in values], leaf)
                                             for f in dataclasses.fields(first) if f.metadata.get("per_sample")})
    if isinstance(first, list):
        return [_merge([v[j] for v in values], leaf) for j in range(len(first))]
    if isinstance(first, dict):
        return {k: _merge([v[k] for v in values], leaf) for k in first}
    return leaf(values)


def _stack_blocks(arrays):
    """The blocks' arrays one after another along the sample axis. (NumPy's concatenate
    keeps the parts' memory order -- channels-last behind the NCHW views -- and runs without
    the interpreter lock; see BENCHMARKS.md.)"""
    return namespace(arrays[0]).concat(arrays, axis=0)
