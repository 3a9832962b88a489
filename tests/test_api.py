"""The public surface: every op and module signature is type-annotated (issue 13) and documented."""

from __future__ import annotations

import inspect

import pytest

from medkernels import nn as mknn
from medkernels import ops


def _public():
    for name in ops.__all__:
        obj = getattr(ops, name)
        if callable(obj) and not isinstance(obj, type):
            yield f"ops.{name}", obj
    for name in mknn.__all__:
        obj = getattr(mknn, name)
        if isinstance(obj, type):
            for method in ("__init__", "forward", "step", "allocate_inference_cache"):
                if method in vars(obj):
                    yield f"nn.{name}.{method}", getattr(obj, method)
        elif callable(obj):
            yield f"nn.{name}", obj


@pytest.mark.parametrize("name,fn", list(_public()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_signatures_are_annotated_and_documented(name, fn):
    sig = inspect.signature(fn)
    missing = [
        p
        for p, v in sig.parameters.items()
        if p != "self" and v.annotation is inspect.Parameter.empty and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
    ]
    assert not missing, f"{name}: parameters without a type: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type"
    if not name.endswith("__init__"):
        assert fn.__doc__ and fn.__doc__.strip(), f"{name}: no docstring"
