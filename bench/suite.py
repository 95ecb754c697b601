"""Benchmark cases, one implementation, in this process: prints one JSON line per case.

    python bench/suite.py CASE[,CASE...] IMPL [--threads T] [--repeats R] [--backend numpy|cupy] [--clock wall|cpu]
                          [--smoke]

IMPL is lipref or torch; both get identical weights and inputs (seeded NumPy draws).
--backend numpy (the default) runs both on the CPU; --backend cupy runs lipref on CuPy and
torch on CUDA (bench/gpu.py), every timed run ending in a device synchronisation. Times are
medians of --repeats runs after one warm-up (--clock cpu: of the process's CPU time, which a
machine shared with other work does not stretch while the process waits for a core; with
--threads 1 it is what the work cost). --smoke runs the case at tiny sizes, once
(tests/test_bench.py: every case runs; its times mean nothing). Each line's peak_rss_mib
is the process's peak so far: `bench/run_all.py` runs every case in its own process (so
peak memory is per case and implementation) and prints the table. The cases themselves
are in bench/cases.py and bench/bound_cases.py.
"""
import argparse
import functools
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("matmul", "conv_4c3f_mnist", "conv_4c3f_cifar", "conv_6c2f_cifar", "linear_4c3f_mnist",
         "global_bound_4c3f", "local_bound_4c3f", "train_step_4c3f", "train_step_4c3f_bcp", "official_step_4c3f", "sound_certify_4c3f")
# run_all.py's default: all but sound certification, whose torch side (2,000 power-iteration
# steps per layer and sample, the paper's evaluation) takes minutes per run on a CPU
TABLE_CASES = CASES[:-1]
BACKENDS = ("numpy", "cupy")

# The sizes of BENCHMARKS.md (the paper's batches and architectures) and the smoke sizes.
PAPER = {"matmul_n": 2048, "layer_batch": 128, "global_iters": 20, "local_batch": 256, "local_iters": 5,
         "train_batch": 128, "train_iters": 2, "bcp_train_batch": 256, "bcp_train_iters": 5,
         "sound_arch": "4c3f", "sound_batch": 50, "lanczos_steps": 40, "pi_iters": 2000, "gram_limit": None}
SMOKE = {"matmul_n": 64, "layer_batch": 2, "global_iters": 2, "local_batch": 4, "local_iters": 1,
         "train_batch": 4, "train_iters": 1, "bcp_train_batch": 4, "bcp_train_iters": 1,
         "sound_arch": "2c2f", "sound_batch": 4, "lanczos_steps": 5, "pi_iters": 5, "gram_limit": 0}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("impl", choices=("lipref", "torch"))
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both libraries (default: the CPUs this process may use; 1 with --smoke)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="numpy", choices=BACKENDS,
                    help="numpy: lipref on NumPy, torch on the CPU; cupy: lipref on CuPy, torch on CUDA")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"), help="wall time, or the process's CPU time")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and one repeat: checks that the case runs")
    ap.add_argument("--openblas-coretype", default=None,
                    help="OpenBLAS kernel set for NumPy (e.g. Cooperlake): OpenBLAS 0.3.31 takes AMD Zen 5 "
                         "for Haswell and leaves its AVX-512 unused (OpenMathLib/OpenBLAS#6029)")
    args = ap.parse_args(argv)
    args.cases = args.cases.split(",")
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.smoke:  # one thread: on a busy machine idle OpenMP threads spin for seconds
        args.repeats = 1
        args.threads = args.threads or 1
    args.threads = args.threads or len(os.sched_getaffinity(0))
    return args


def median_seconds(fn, repeats, sync=lambda: None, clock=time.perf_counter):
    """The median time of fn() by `clock` (wall time by default) over `repeats` runs after
    one warm-up run, each run ended by sync() (a device synchronisation on a GPU, where
    calls return before the work is done)."""
    import statistics
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return float(statistics.median(times))


class Bench:
    """Where and how one case runs: the implementation ("lipref" or "torch"), the backend
    ("numpy": both on the CPU; "cupy": lipref on CuPy, torch on CUDA), the sizes (PAPER or
    SMOKE) and the repeats. The cases take their arrays, timing and synchronisation from it,
    so one case's code runs on every backend."""

    def __init__(self, impl, backend="numpy", size=None, repeats=5, clock="wall"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.impl, self.backend, self.size, self.repeats = impl, backend, dict(size or PAPER), repeats
        self.clock = time.process_time if clock == "cpu" else time.perf_counter

    @property
    def gpu(self):
        return self.backend == "cupy"

    @functools.cached_property
    def xp(self):
        """lipref's array namespace (get_backend checks the device: once)."""
        from lipref.backend import get_backend
        return get_backend(self.backend)

    @property
    def torch_device(self):
        return "cuda" if self.gpu else "cpu"

    def array(self, a):
        """Host array `a` on lipref's backend."""
        return self.xp.asarray(a)

    def tensor(self, a):
        """Host array `a` as a torch tensor on the torch device."""
        import torch
        return torch.from_numpy(a).to(self.torch_device)

    def sync(self):
        """Wait until the device has finished the work queued so far (nothing on the CPU)."""
        if not self.gpu:
            return
        if self.impl == "torch":
            import torch
            torch.cuda.synchronize()
        else:
            import cupy
            cupy.cuda.Device().synchronize()

    def seconds(self, fn):
        return median_seconds(fn, self.repeats, self.sync, self.clock)

    def device_peak_mib(self):
        """The most device memory the implementation held (None on the CPU): torch's peak
        allocation, or the bytes CuPy's memory pool holds (it keeps freed blocks until told
        otherwise, so its size at the end is about its peak)."""
        if not self.gpu:
            return None
        if self.impl == "torch":
            import torch
            return torch.cuda.max_memory_allocated() / 2 ** 20
        import cupy
        return cupy.get_default_memory_pool().total_bytes() / 2 ** 20


def blas_in_use():
    """NumPy's BLAS and the kernel set it picked, where threadpoolctl can tell."""
    try:
        import threadpoolctl
    except ImportError:
        return "unknown (install threadpoolctl to record it)"
    info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')}".strip()
                     for i in info) or "none found"


def run_case(case, bench):
    """The result dict of one case (bench/cases.py, bench/bound_cases.py) with what ran it."""
    from bench import bound_cases, cases
    result = (getattr(cases, f"case_{case}", None) or getattr(bound_cases, f"case_{case}"))(bench)
    result.update({"case": case, "impl": bench.impl, "backend": bench.backend,
                   "device_peak_mib": bench.device_peak_mib()})
    return result


def main(argv=None):
    args = parse(argv)
    from bench.common import set_threads
    set_threads(args.threads)  # before numpy / torch start their thread pools
    if args.openblas_coretype:
        os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype
    from lipref.backend import keep_freed_memory
    keep_freed_memory()  # as the CLI does, in both sides' processes (torch allocates with malloc too)
    if args.impl == "torch":
        import torch
        torch.set_num_threads(args.threads)
    bench = Bench(args.impl, args.backend, SMOKE if args.smoke else PAPER, args.repeats, args.clock)
    from bench.common import strict
    for case in args.cases:
        result = run_case(case, bench)
        result.update({"threads": args.threads, "repeats": args.repeats, "clock": args.clock, "smoke": args.smoke,
                       "blas": blas_in_use(), "load_average_1min": os.getloadavg()[0],
                       # this process's largest resident set size so far (KiB on Linux), interpreter included
                       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})
        print(json.dumps(strict(result), allow_nan=False), flush=True)


if __name__ == "__main__":
    main()
