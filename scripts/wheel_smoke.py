"""The installed medkernels wheel under the installed torch: every compiled op forward and backward on CPU against
its pure-PyTorch reference, a module, and torch.compile(fullgraph=True) on one op.

Run by scripts/wheel_matrix.sh in fresh virtual environments (one per torch version), from outside the source tree
so that the installed package is the one imported. Exits non-zero on the first failure.
"""

from __future__ import annotations

import sys
import warnings

import torch

warnings.simplefilter("error", RuntimeWarning)  # "the compiled kernels are not loaded" must fail, not warn
import medkernels  # noqa: E402
from medkernels import nn, ops  # noqa: E402
from medkernels.ops import _library  # noqa: E402

torch.manual_seed(0)
D = torch.float64


def grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(
        (o.float() * torch.linspace(0.5, 1.5, o.numel()).view(o.shape)).sum() for o in outs if o.is_floating_point()
    )
    loss.backward()
    return outs, [t.grad for t in leaves if t.requires_grad]


def check(name, ours, ref, inputs, tol=1e-9):
    out_a, g_a = grads(ours, inputs)
    out_b, g_b = grads(ref, inputs)
    for a, b in zip(list(out_a) + g_a, list(out_b) + g_b):
        if a is None and b is None:
            continue
        err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        scale = max(1.0, b.double().abs().max().item() if b.numel() else 0.0)
        if not err <= tol * scale:
            raise SystemExit(f"FAIL {name}: max error {err:.3g} > {tol:g} * {scale:.3g}")
    print(f"ok  {name}: forward and backward match the reference")


def main() -> None:
    print(f"medkernels {medkernels.__version__} from {medkernels.__file__}")
    print(f"torch {torch.__version__}; extension loaded: {_library.HAS_C}")
    if not _library.HAS_C:
        raise SystemExit(f"FAIL: the compiled kernels did not load: {_library.LOAD_ERROR}")
    cpu = {"backend": "cpu"}
    ref = {"backend": "reference"}

    b, d, L, n = 2, 6, 37, 5
    scan_in = [
        torch.randn(b, d, L, dtype=D),
        torch.rand(b, d, L, dtype=D),
        -torch.rand(d, n, dtype=D),
        torch.randn(b, n, L, dtype=D),
        torch.randn(b, n, L, dtype=D),
        torch.randn(d, dtype=D),
        torch.randn(b, d, L, dtype=D),
    ]
    check(
        "selective_scan_fn",
        lambda *a: ops.selective_scan_fn(*a, delta_softplus=True, **cpu),
        lambda *a: ops.selective_scan_ref(*a, delta_softplus=True),
        scan_in,
    )

    K = 3
    orders = torch.stack([torch.stack([torch.randperm(L) for _ in range(K)]) for _ in range(b)])
    mo_in = [
        torch.randn(b, d, L, dtype=D),
        torch.rand(b, K, d, L, dtype=D),
        -torch.rand(K, d, n, dtype=D),
        torch.randn(b, K, n, L, dtype=D),
        torch.randn(b, K, n, L, dtype=D),
        torch.randn(K, d, dtype=D),
        torch.randn(K, d, dtype=D),
    ]
    check(
        "multi_order_selective_scan",
        lambda *a: ops.multi_order_selective_scan(*a, orders, **cpu),
        lambda *a: ops.multi_order_selective_scan_ref(*a, orders),
        mo_in,
    )

    conv_in = [torch.randn(b, d, L, dtype=D), torch.randn(d, 4, dtype=D), torch.randn(d, dtype=D)]
    check(
        "causal_conv1d_fn",
        lambda *a: ops.causal_conv1d_fn(*a, activation="silu", **cpu),
        lambda *a: ops.causal_conv1d_ref(*a, activation="silu"),
        conv_in,
    )

    q = [torch.randn(2, 9, 11, 2, 8, dtype=D) for _ in range(3)]
    check(
        "na2d",
        lambda *a: ops.na2d(*a, kernel_size=3, dilation=2, **cpu),
        lambda *a: ops.na2d_ref(*a, kernel_size=3, dilation=2),
        q,
    )
    q1 = [torch.randn(2, 2, 13, 8, dtype=D) for _ in range(2)]
    check(
        "na1d_qk", lambda *a: ops.na1d_qk(*a, kernel_size=5, **cpu), lambda *a: ops.na1d_qk_ref(*a, kernel_size=5), q1
    )
    av = [torch.softmax(torch.randn(2, 2, 13, 5, dtype=D), -1), torch.randn(2, 2, 13, 8, dtype=D)]
    check(
        "na1d_av", lambda *a: ops.na1d_av(*a, kernel_size=5, **cpu), lambda *a: ops.na1d_av_ref(*a, kernel_size=5), av
    )

    g = [torch.randn(1, 4, 6, 8, 2, 4, dtype=D) for _ in range(3)]
    check(
        "dilated_attention3d",
        lambda *a: ops.dilated_attention3d(*a, (2, 3, 4), "global", **cpu),
        lambda *a: ops.dilated_attention3d_ref(*a, (2, 3, 4), "global"),
        g,
    )
    check(
        "dilated_attention3d_qkvpacked",
        lambda t: ops.dilated_attention3d_qkvpacked(t, (2, 3, 4), "local", **cpu),
        lambda t: ops.dilated_attention3d_ref(*t.unbind(4), (2, 3, 4), "local"),
        [torch.randn(1, 4, 6, 8, 3, 2, 4, dtype=D)],
    )

    check("dct2d", lambda x: ops.dct2d(x, **cpu), lambda x: ops.dct2d_ref(x), [torch.randn(2, 3, 7, 9, dtype=D)])

    x, grid = torch.randn(5, 6, dtype=D), torch.linspace(-1.5, 1.5, 8, dtype=D)
    kan_in = [x, grid, torch.tensor(1.3, dtype=D), torch.randn(4, 6 * 8, dtype=D)]
    check("rswaf_kan", lambda *a: ops.rswaf_kan(*a, **cpu), lambda *a: ops.rswaf_kan_ref(*a), kan_in)

    pts = torch.randn(2, 300, 3)
    if not torch.equal(ops.furthest_point_sample(pts, 17, **cpu), ops.furthest_point_sample(pts, 17, **ref)):
        raise SystemExit("FAIL furthest_point_sample: indices differ from the reference")
    print("ok  furthest_point_sample: the reference's indices")
    da, ia = ops.knn(pts[:, :40], pts, 6, **cpu)
    db, ib = ops.knn(pts[:, :40], pts, 6, **ref)
    if not (torch.equal(ia, ib) and torch.allclose(da, db, rtol=1e-6, atol=1e-6)):
        raise SystemExit("FAIL knn: neighbours differ from the reference")
    print("ok  knn: the reference's neighbours")

    block = nn.Mamba(d_model=16, d_state=8, backend="cpu")
    y = block(torch.randn(2, 19, 16))
    y.sum().backward()
    if not all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters() if p.requires_grad):
        raise SystemExit("FAIL nn.Mamba: a parameter has no finite gradient")
    print("ok  nn.Mamba: forward and backward")

    fn = torch.compile(
        lambda *a: ops.selective_scan_fn(*a, delta_softplus=True, **cpu), fullgraph=True, backend="aot_eager"
    )
    f32 = [t.float() for t in scan_in]
    if not torch.allclose(fn(*f32), ops.selective_scan_fn(*f32, delta_softplus=True, **cpu), rtol=0, atol=0):
        raise SystemExit("FAIL torch.compile: the compiled op differs from eager")
    print("ok  torch.compile(fullgraph=True): selective_scan_fn")
    print("PASS")


if __name__ == "__main__":
    sys.exit(main())
