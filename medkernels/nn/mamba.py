"""The Mamba block, drop-in for ``mamba_ssm.modules.mamba_simple.Mamba``.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv 2312.00752).
Same constructor, defaults, parameter names and shapes, initialisation and ``_no_weight_decay`` /
``_no_reinit`` flags as mamba_ssm, so its state_dicts load with ``strict=True`` and give the same
outputs; the forward runs on medkernels' fused ops (causal conv1d + selective scan) on every
backend, CPU included, and decoding (``allocate_inference_cache`` / ``step``) matches the full
forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Backend, Device, DType

__all__ = ["Mamba", "InferenceParams"]


@dataclass
class InferenceParams:
    """Decoding state shared by the layers of a model (mamba_ssm.utils.generation.InferenceParams):
    ``key_value_memory_dict[layer_idx] = (conv_state, ssm_state)``; ``seqlen_offset`` > 0 means the
    next forward is a decoding step."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: torch.Tensor | None = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


class Mamba(nn.Module):
    """Mamba block on ``(B, L, d_model)``.

    Args:
        d_model: model width.
        d_state: SSM state size N.
        d_conv: causal conv width.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the dt projection, "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: dt projection initialisation (as mamba_ssm).
        conv_bias: bias in the conv; bias: bias in in_proj/out_proj.
        use_fast_path: accepted for compatibility; medkernels always runs its fused ops.
        layer_idx: key of this layer's decoding state in ``InferenceParams``.
        device, dtype: of the parameters (A_log and D stay float32, as upstream).
        backend: medkernels backend for the conv and scan (None = automatic); a medkernels extension.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device: Device = None,
        dtype: DType = None,
        *,
        backend: Backend = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if dt_init not in ("constant", "random"):
            raise ValueError(f"Mamba: dt_init must be 'constant' or 'random', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.backend = backend

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection: preserve variance at initialisation
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # dt bias so that softplus(dt_bias) lies in [dt_min, dt_max]: the inverse of softplus
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D real initialisation, kept in float32
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).expand(self.d_inner, -1).contiguous()
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    def forward(self, hidden_states: torch.Tensor, inference_params: InferenceParams | None = None) -> torch.Tensor:
        """Args: hidden_states ``(B, L, d_model)``; inference_params for decoding. Returns ``(B, L, d_model)``."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba: hidden_states must be (batch, seqlen, d_model={self.d_model}), got "
                f"{tuple(hidden_states.shape)}"
            )
        batch, seqlen, _ = hidden_states.shape
        conv_state, ssm_state = None, None
        if inference_params is not None:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                out, _, _ = self.step(hidden_states, conv_state, ssm_state)
                return out

        # (B, L, d_model) -> (B, 2 * d_inner, L) in one matmul
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * seqlen, self.d_model).t()).reshape(
            2 * self.d_inner, batch, seqlen
        )  # explicit sizes: an empty sequence is valid input
        xz = xz.permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        acc = torch.float64 if xz.dtype == torch.float64 else torch.float32  # the scan's parameter dtype
        A = -torch.exp(self.A_log.to(acc))
        x, z = xz.chunk(2, dim=1)
        if conv_state is not None:
            with torch.no_grad():
                conv_state.copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        x = ops.causal_conv1d_fn(
            x, self.conv1d.weight[:, 0], self.conv1d.bias, activation=self.activation, backend=self.backend
        )
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, self.d_inner))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).reshape(self.d_inner, batch, seqlen).permute(1, 0, 2)
        B = B.reshape(batch, seqlen, self.d_state).transpose(1, 2).contiguous()
        C = C.reshape(batch, seqlen, self.d_state).transpose(1, 2).contiguous()
        y = ops.selective_scan_fn(
            x,
            dt,
            A,
            B,
            C,
            self.D.to(acc),
            z=z,
            delta_bias=self.dt_proj.bias.to(acc),
            delta_softplus=True,
            return_last_state=ssm_state is not None,
            backend=self.backend,
        )
        if ssm_state is not None:
            y, last_state = y
            with torch.no_grad():
                ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def step(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoding step.

        Args:
            hidden_states: ``(B, 1, d_model)``.
            conv_state: ``(B, d_inner, d_conv)``, updated in place.
            ssm_state: ``(B, d_inner, d_state)``, updated in place.

        Returns:
            ``(out (B, 1, d_model), conv_state, ssm_state)``.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise ValueError(
                f"Mamba.step: decodes one token at a time, (batch, 1, d_model); got {tuple(hidden_states.shape)}"
            )
        dtype = hidden_states.dtype
        xz = self.in_proj(hidden_states.squeeze(1))
        x, z = xz.chunk(2, dim=-1)
        x = ops.causal_conv1d_update(x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, self.activation)
        x_db = self.x_proj(x)
        dt, B, C = torch.split(x_db, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        dt = F.softplus(dt + self.dt_proj.bias.to(dtype=dt.dtype))
        dA = torch.exp(torch.einsum("bd,dn->bdn", dt, A))
        dB = torch.einsum("bd,bn->bdn", dt, B)
        with torch.no_grad():
            ssm_state.copy_(ssm_state * dA + x[:, :, None] * dB)
        y = torch.einsum("bdn,bn->bd", ssm_state.to(dtype), C)
        y = y + self.D.to(dtype) * x
        y = y * self.act(z)
        out = self.out_proj(y)
        return out.unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: DType = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed ``(conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state))`` for decoding."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_model * self.expand, self.d_conv, device=device, dtype=conv_dtype)
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        ssm_state = torch.zeros(batch_size, self.d_model * self.expand, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(
        self, inference_params: InferenceParams, batch_size: int, initialize_states: bool = False
    ):
        if self.layer_idx is None:
            raise ValueError("Mamba: decoding with inference_params needs layer_idx")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.allocate_inference_cache(batch_size, inference_params.max_seqlen)
        conv_state, ssm_state = cache[self.layer_idx]
        if initialize_states:
            conv_state.zero_()
            ssm_state.zero_()
        return conv_state, ssm_state

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"dt_rank={self.dt_rank}, layer_idx={self.layer_idx}"
        )
