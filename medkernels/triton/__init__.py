"""medkernels.triton: Triton kernels (the GPU path) and their launch configurations; used only by medkernels.ops."""
