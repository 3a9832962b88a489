"""One way to count a model's FLOPs: forward hooks on a copy of it, run once on inputs of the given shapes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

Rule = Callable[[nn.Module, tuple, object], int]


def forward_flops(
    model: nn.Module,
    inputs: Sequence[torch.Tensor | None],
    rules: Mapping[type, Rule] | None = None,
    opaque: tuple[type, ...] = (),
    meta: bool = True,
) -> int:
    """FLOPs of one forward of ``model(*inputs)``: 2 x the multiply-accumulates of every ``nn.Conv1d/2d/3d`` (output
    elements x input channels per group x kernel volume) and ``nn.Linear`` it calls as a module, plus what each
    ``rules[type](module, inputs, output)`` returns for the modules of that type (for the work they do outside
    called conv/linear modules: attention products, scans, projections run as plain matmuls).

    Args:
        model: the model (not modified: a deep copy runs, on the meta device when ``meta``).
        inputs: the forward's positional inputs, tensors of the wanted shapes (or None); moved to the parameters'
            device (and floating dtype).
        rules: extra FLOPs per module type.
        opaque: module types whose rule counts their whole forward: conv/linear modules inside them are not counted.
        meta: run on the meta device (no arithmetic, any size); False runs a real forward under ``no_grad`` (for
            models whose forward needs values, e.g. sampling indices).

    Returns:
        The FLOPs.
    """
    rules = dict(rules or {})
    run = copy.deepcopy(model).to("meta") if meta else model
    was_training = run.training
    run.eval()
    total = [0]

    def conv_linear(m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Linear):
            total[0] += 2 * out.numel() * m.in_features
        else:
            k = 1
            for s in m.kernel_size:
                k *= s
            total[0] += 2 * out.numel() * (m.in_channels // m.groups) * k

    def rule(fn: Rule) -> Callable:
        def hook(m: nn.Module, args: tuple, out: object) -> None:
            total[0] += fn(m, args, out)

        return hook

    inside = {id(x) for m in run.modules() if isinstance(m, opaque) for x in m.modules() if x is not m}
    hooks = []
    for m in run.modules():
        fn = next((f for t, f in rules.items() if isinstance(m, t)), None)
        if fn is not None:
            hooks.append(m.register_forward_hook(rule(fn)))
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and id(m) not in inside:
            hooks.append(m.register_forward_hook(conv_linear))
    p = next(run.parameters())
    args = [t if t is None else t.to(p.device, p.dtype if t.is_floating_point() else t.dtype) for t in inputs]
    try:
        with torch.no_grad():
            run(*args)
    finally:
        for h in hooks:
            h.remove()
        run.train(was_training)
    return total[0]
