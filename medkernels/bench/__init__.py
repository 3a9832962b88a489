"""medkernels.bench: the ``medkernels-bench`` command (``python -m medkernels.bench``)."""
