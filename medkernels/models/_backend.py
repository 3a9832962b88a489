"""One ``backend`` property for every model: it reads and sets the backend of the model's kernel modules."""

from __future__ import annotations

from torch import nn

from medkernels._typing import Backend


class KernelBackend:
    """Mixin for an ``nn.Module`` model whose kernels live in submodules of the types ``_kernel_types`` (each with
    its own ``backend`` attribute): ``model.backend`` is theirs (the first one's; None when there is none), and
    setting it sets all of them."""

    _kernel_types: tuple[type[nn.Module], ...] = ()

    @property
    def backend(self) -> Backend:
        """The medkernels backend of the model's kernel modules (None = automatic); setting it sets all of them."""
        return next((m.backend for m in self.modules() if isinstance(m, self._kernel_types)), None)

    @backend.setter
    def backend(self, value: Backend) -> None:
        for m in self.modules():
            if isinstance(m, self._kernel_types):
                m.backend = value
