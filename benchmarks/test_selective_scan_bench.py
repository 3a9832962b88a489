"""pytest-benchmark cases (not part of the test run): `make bench-pytest`, or
`pytest benchmarks --benchmark-only --benchmark-autosave` then `--benchmark-compare` to catch regressions.

They time the same cases as `medkernels-bench --profile default`, one backend and pass per case.
"""

import pytest
import torch

from medkernels.bench.cases import cases_for
from medkernels.bench.runner import PASSES, _work, backends_for

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PARAMS = [
    pytest.param(
        case,
        dtype,
        backend,
        passname,
        id="-".join([case.op, *case.label.split(" ")[:4], str(dtype)[6:], backend, passname]),
    )
    for case in cases_for("gpu" if DEVICE.type == "cuda" else "default")
    for dtype in case.dtypes
    for backend in backends_for(case, DEVICE, dtype, None)
    for passname in PASSES
]


@pytest.mark.parametrize("case,dtype,backend,passname", PARAMS)
def test_bench(benchmark, case, dtype, backend, passname):
    inputs = case.make_inputs(DEVICE, dtype)
    fn, _ = _work(case, lambda x: case.call(backend, x), inputs, passname)
    if backend == "reference":  # seconds per call: a few rounds are enough
        benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    else:
        benchmark(fn)
