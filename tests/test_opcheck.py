"""torch.library.opcheck on every sample of every operator registered under torch.ops.medkernels.

The samples come from the op's own test file: each tests/test_<op>.py defines ``opcheck_samples()``
({op name: [argument lists]}), found here by importing every test module that defines it. A registered
op without samples fails the coverage test, so a new op cannot go without."""

from __future__ import annotations

import importlib
import pathlib

import pytest
import torch


def _sample_modules():
    """The test modules defining opcheck_samples(), imported by name as pytest imports them (tests/ is on
    sys.path): only the files that mention it are imported."""
    mods = []
    for path in sorted(pathlib.Path(__file__).parent.glob("test_*.py")):
        if path.stem != __name__ and "def opcheck_samples(" in path.read_text():
            mod = importlib.import_module(path.stem)
            assert callable(getattr(mod, "opcheck_samples", None)), f"{path.name}: opcheck_samples() not found"
            mods.append(mod)
    return mods


def _owners() -> dict:
    """{op name: (module, number of samples)}, every op from exactly one module."""
    owners = {}
    for mod in _sample_modules():
        for op, samples in mod.opcheck_samples().items():
            assert op not in owners, f"{op}: samples in both {owners[op][0].__name__} and {mod.__name__}"
            owners[op] = (mod, len(samples))
    return owners


OWNERS = _owners()


@pytest.mark.parametrize("op,index", [(op, i) for op, (_, n) in OWNERS.items() for i in range(n)])
def test_opcheck(op, index):
    # fresh samples for every check, as the op's module builds them
    torch.library.opcheck(getattr(torch.ops.medkernels, op).default, OWNERS[op][0].opcheck_samples()[op][index])


def test_every_registered_op_has_opcheck_samples():
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("medkernels::")}
    covered = set(OWNERS)
    assert registered == covered, (
        f"ops without opcheck samples: {sorted(registered - covered)}; "
        f"samples for unregistered ops: {sorted(covered - registered)}"
    )
