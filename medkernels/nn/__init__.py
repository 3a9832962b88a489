"""medkernels.nn: drop-in torch modules built only on :mod:`medkernels.ops`.

Modules arrive with the kernels they use (Mamba, neighborhood attention, ...); each matches the
constructor and state_dict names of the module it replaces.
"""

__all__: list[str] = []
