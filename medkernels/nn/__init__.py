"""medkernels.nn: drop-in torch modules built only on :mod:`medkernels.ops`.

Each matches the constructor and state_dict names of the module it replaces.
"""

from .dct_attention import DCTAttention
from .dct_conv import DCTConvBlock, MobileConv
from .dformer import DFormerBlock, DilatedAttention3d
from .kan import FasterKAN, FasterKANLayer
from .mamba import InferenceParams, Mamba
from .medvit import FittedNeighborhoodAttention2D, GFPBlock, LFPBlock
from .neighborhood_attention import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .point_ssm import PointSSMBlock, PointSSMGroupBlock, point_scan_orders
from .ss2d import SS2D, VSSBlock, cross_scan_orders
from .tri_oriented_mamba import TriOrientedMamba, TriOrientedMambaLayer, slice_order

__all__ = [
    "DCTAttention",
    "DCTConvBlock",
    "DFormerBlock",
    "DilatedAttention3d",
    "FasterKAN",
    "FasterKANLayer",
    "FittedNeighborhoodAttention2D",
    "GFPBlock",
    "InferenceParams",
    "LFPBlock",
    "Mamba",
    "MobileConv",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "PointSSMBlock",
    "PointSSMGroupBlock",
    "SS2D",
    "VSSBlock",
    "cross_scan_orders",
    "point_scan_orders",
    "TriOrientedMamba",
    "TriOrientedMambaLayer",
    "slice_order",
]
