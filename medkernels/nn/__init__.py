"""medkernels.nn: drop-in torch modules built only on :mod:`medkernels.ops`.

Each matches the constructor and state_dict names of the module it replaces.
"""

from .dct_attention import DCTAttention
from .dformer import DFormerBlock, DilatedAttention3d
from .kan import FasterKAN, FasterKANLayer
from .mamba import InferenceParams, Mamba
from .medvit import FittedNeighborhoodAttention2D, GFPBlock, LFPBlock
from .neighborhood_attention import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .point_ssm import PointSSMGroupBlock, point_scan_orders
from .tri_oriented_mamba import TriOrientedMamba, TriOrientedMambaLayer, slice_order

__all__ = [
    "DCTAttention",
    "DFormerBlock",
    "DilatedAttention3d",
    "FasterKAN",
    "FasterKANLayer",
    "FittedNeighborhoodAttention2D",
    "GFPBlock",
    "InferenceParams",
    "LFPBlock",
    "Mamba",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "PointSSMGroupBlock",
    "point_scan_orders",
    "TriOrientedMamba",
    "TriOrientedMambaLayer",
    "slice_order",
]
