"""Heavy models behind small interfaces, loaded lazily and once per run.

:class:`Backends` is the only place that chooses and loads implementations; tests hand it fakes or tiny real
models instead (``Backends(config, target=my_network)``).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dnd.backends.targets import TargetNetwork
    from dnd.config import RunConfig


class Backends:
    """The models a run needs, each loaded on first use and then reused by every stage."""

    def __init__(self, config: RunConfig, *, target: TargetNetwork | None = None):
        self.config = config
        self._given_target = target

    @cached_property
    def device(self):  # noqa: ANN201 - torch.device, imported lazily
        from dnd.backends.targets import resolve_device

        return resolve_device(self.config.device)

    @cached_property
    def target(self) -> TargetNetwork:
        from dnd.backends.targets import load_target

        network = self._given_target or load_target(self.config.target)
        return network.to(self.device)

    def target_identity(self) -> dict:
        """What cache keys know about the target network, without loading a built-in one."""
        from dnd.config import key_fields

        if self._given_target is not None:
            return self._given_target.identity
        return key_fields(self.config.target)
