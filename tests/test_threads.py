"""backend.sample_blocks and backend.map_in_threads: the blocks partition the batch, the
calls return in order, exceptions reach the caller, nested calls run in their own thread,
and NumPy's BLAS runs one thread per worker, restored afterwards."""
import threading

import pytest
import threadpoolctl
from hypothesis import given
from hypothesis import strategies as st

from lipref import backend


@given(n=st.integers(0, 300), block=st.integers(1, 80))
def test_sample_blocks_partition_the_batch(n, block):
    import array_api_compat.numpy as xp
    blocks = backend.sample_blocks(xp, n, block)
    assert blocks[0].start == 0 and blocks[-1].stop == n
    for a, b in zip(blocks, blocks[1:]):
        assert a.stop == b.start
    sizes = [s.stop - s.start for s in blocks]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= block
    assert len(blocks) == max(-(-n // block), 1)  # the fewest blocks that fit


def test_sample_blocks_defaults_and_errors(xp):
    blocks = backend.sample_blocks(xp, 300, None)
    if backend.is_host_numpy(xp):
        assert max(s.stop - s.start for s in blocks) <= backend.HOST_SAMPLE_BLOCK and len(blocks) > 1
    else:  # a GPU (or the strict test backend) keeps the batch whole
        assert blocks == [slice(0, 300)]
    with pytest.raises(ValueError, match="block size"):
        backend.sample_blocks(xp, 10, 0)
    with pytest.raises(ValueError, match="threads"):
        backend.map_in_threads(xp, abs, [1], 0)
    assert backend.default_threads(xp) >= 1
    if not backend.is_host_numpy(xp):
        assert backend.default_threads(xp) == 1


def _blas_threads():
    counts = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert counts, "no BLAS library found by threadpoolctl"
    return counts[0]


def test_map_in_threads_runs_blocks_in_threads_with_one_thread_blas():
    import array_api_compat.numpy as xp
    before = _blas_threads()
    seen = []
    barrier = threading.Barrier(2, timeout=30)

    def call(i):
        if i < 2:
            barrier.wait()  # both first calls run at the same time: there really are two threads
        inner = backend.map_in_threads(xp, lambda j: threading.get_ident(), [0, 1, 2], 2)
        seen.append((threading.get_ident(), _blas_threads(), set(inner)))
        return i * i
    assert backend.map_in_threads(xp, call, range(6), 2) == [i * i for i in range(6)]
    assert len({ident for ident, _, _ in seen}) == 2 and threading.get_ident() not in {s[0] for s in seen}
    assert all(blas == 1 for _, blas, _ in seen)
    assert all(inner == {ident} for ident, _, inner in seen), "a nested call left its thread"
    assert _blas_threads() == before


def test_map_in_threads_raises_the_callers_exception_and_restores_blas():
    import array_api_compat.numpy as xp
    before = _blas_threads()

    def fail(i):
        if i == 3:
            raise ValueError("block 3 failed")
        return i
    with pytest.raises(ValueError, match="block 3 failed"):
        backend.map_in_threads(xp, fail, range(5), 2)
    assert _blas_threads() == before


def test_map_in_threads_one_thread_stays_in_the_calling_thread(xp):
    """threads=1 (or a single item) runs in the calling thread, and on the host still with a
    one-thread BLAS, so that its products round as they do in the pool."""
    before = _blas_threads()
    seen = backend.map_in_threads(xp, lambda i: (threading.get_ident(), _blas_threads()), range(4), 1)
    seen += backend.map_in_threads(xp, lambda i: (threading.get_ident(), _blas_threads()), [0], 3)
    assert {ident for ident, _ in seen} == {threading.get_ident()}
    if backend.is_host_numpy(xp):
        assert {blas for _, blas in seen} == {1}
    assert _blas_threads() == before
    if not backend.is_host_numpy(xp):
        idents = backend.map_in_threads(xp, lambda i: threading.get_ident(), range(4), 4)
        assert set(idents) == {threading.get_ident()}


def test_keep_freed_memory_stops_page_faults_of_repeated_allocations():
    """After keep_freed_memory (glibc), allocating and freeing the same large arrays again and
    again no longer page-faults their memory in each time. Runs in a child process, since
    the setting is process-wide and lasting."""
    import platform
    import subprocess
    import sys
    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"keep_freed_memory tunes glibc's malloc; this C library is {platform.libc_ver()[0] or 'unknown'}")
    code = """
import resource, sys
import numpy
from lipref.backend import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def churn():
    for _ in range(20):
        a = numpy.ones(3_000_000)  # 24 MB, above glibc's default mmap threshold
        b = a + 1.0
        del a, b
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {}
    for arg in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        faults[arg] = int(out.stdout)
    pages = 20 * 2 * 24_000_000 // 4096  # what faulting every page of every array would cost
    assert faults["keep"] < pages // 100 and faults["default"] > pages // 50, (faults, pages)
