"""A target network in eval mode: layer lookup by module path and activation capture with forward hooks."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from dnd.backends.preprocess import Preprocess, split_preprocess
from dnd.devices import choose_memory_format
from dnd.errors import DnDError
from dnd.halving import FittingBatches
from dnd.units import UnitMap

#: ``record.autocast`` values and the precision they run CUDA passes in (off: float32).
AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "off": None}


class _StopForward(Exception):
    """Raised by the last hook that fires, so layers after the recorded ones are never computed."""


@dataclass
class TargetNetwork:
    """A vision network in eval mode with the preprocessing its weights expect.

    ``identity`` is what cache keys know about the network: the config for built-in networks, a hash of the
    parameters for a module passed from Python (so changed weights never reuse stale activations).
    """

    name: str
    module: nn.Module
    preprocess: Preprocess
    identity: dict[str, Any] = field(default_factory=dict)
    #: The geometric part of ``preprocess`` (resize, crop): the image as the network sees it, still a PIL image.
    view: Callable[[Image.Image], Image.Image] = field(init=False, repr=False)
    #: The rest of ``preprocess``: ``tensorize(view(image)) == preprocess(image)``.
    tensorize: Preprocess = field(init=False, repr=False)
    #: Layout of the network and its inputs (see :meth:`to`).
    memory_format: torch.memory_format = field(init=False, repr=False, default=torch.contiguous_format)
    #: Forward passes run in batches that fit in GPU memory (halved on CUDA out-of-memory, see dnd.halving).
    batches: FittingBatches = field(init=False, repr=False)
    #: The units described instead of neurons (``units.*``, set by Backends), or None for neurons; readers of a
    #: layer's maps go through :func:`dnd.layer_reductions.summary_reducer` and
    #: :func:`dnd.layer_reductions.unit_maps_reducer`, which apply them.
    units: UnitMap | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.module.eval()
        if not self.identity:
            self.identity = {"name": self.name, "parameters": parameter_hash(self.module)}
        self.view, self.tensorize = split_preprocess(self.preprocess)
        self.batches = FittingBatches(f"target network {self.name}")

    @property
    def device(self) -> torch.device:
        tensor = next(self.module.parameters(), None)
        if tensor is None:
            tensor = next(self.module.buffers(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def to(self, device: torch.device | str, memory_format: str = "auto") -> TargetNetwork:
        """Move the network to ``device`` in ``memory_format`` (``execution.memory_format``; see
        :func:`choose_memory_format`)."""
        device = torch.device(device)
        self.memory_format = choose_memory_format(self.module, device, memory_format)
        self.module.to(device, memory_format=self.memory_format)
        return self

    def place(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels [B, 3, H, W]`` on the network's device, in its memory format."""
        return pixels.to(self.device, non_blocking=True, memory_format=self.memory_format)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The network's output for ``pixels [B, 3, H, W]`` (preprocessed), e.g. logits ``[B, n_classes]``, in one
        pass (callers that hook into the pass halve batches themselves, with :attr:`batches`)."""
        return self.module(self.place(pixels))

    def layer(self, path: str) -> nn.Module:
        """The submodule at ``path`` (e.g. ``layer3`` or ``blocks.9.mlp``); unknown paths list near ones."""
        try:
            return self.module.get_submodule(path)
        except AttributeError:
            raise DnDError(unknown_layer_message(self.module, path, self.name)) from None

    @torch.no_grad()
    def capture(
        self,
        pixels: torch.Tensor,
        layers: list[str],
        reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
        autocast: str = "off",
    ) -> dict[str, torch.Tensor]:
        """Run ``pixels [B, 3, H, W]`` and return each layer's output, or ``reduce(layer, output)`` if given.

        Reducing inside the hook means full feature maps of a whole batch never pile up in memory. ``autocast``
        (float16, bfloat16 or off) is the precision of the pass on CUDA (ignored elsewhere); every stage passes
        ``record.autocast``, so that activations on crops and generated images are computed like those of the
        probing set. The forward pass stops as soon as every requested layer has produced its output. A module
        called more than once per forward pass is recorded at its first call. A batch that runs out of CUDA memory
        is split and run in halves.
        """
        if autocast not in AUTOCAST_DTYPES:
            raise DnDError(f"autocast {autocast!r}: choose one of {', '.join(AUTOCAST_DTYPES)}")
        return self.batches.run(
            lambda part: self._capture(part, layers, reduce, AUTOCAST_DTYPES[autocast]), pixels, _joined_outputs
        )

    def _capture(
        self,
        pixels: torch.Tensor,
        layers: list[str],
        reduce: Callable[[str, torch.Tensor], torch.Tensor] | None,
        autocast: torch.dtype | None,
    ) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}

        def hook_for(path: str) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                if path in outputs:
                    return
                tensor = output[0] if isinstance(output, tuple | list) else output
                outputs[path] = reduce(path, tensor) if reduce is not None else tensor
                if len(outputs) == len(layers):
                    raise _StopForward

            return hook

        handles = [self.layer(path).register_forward_hook(hook_for(path)) for path in layers]
        enabled = autocast is not None and self.device.type == "cuda"
        try:
            with torch.autocast("cuda", dtype=autocast or torch.float16, enabled=enabled):
                self.module(self.place(pixels))
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [path for path in layers if path not in outputs]
        if missing:
            raise DnDError(f"layer(s) {missing} of {self.name} did not run in the forward pass")
        return outputs

    @torch.no_grad()
    def describe_layers(self, sample: Image.Image) -> list[tuple[str, str, str]]:
        """``(module path, module type, per-image output shape)`` for every module, from one forward pass."""
        shapes: dict[str, str] = {}

        def hook_for(path: str) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                tensor = output[0] if isinstance(output, tuple | list) else output
                if isinstance(tensor, torch.Tensor):
                    shapes.setdefault(path, " × ".join(str(d) for d in tensor.shape[1:]))

            return hook

        modules = [(path, module) for path, module in self.module.named_modules() if path]
        handles = [module.register_forward_hook(hook_for(path)) for path, module in modules]
        try:
            self.module(self.place(self.preprocess(sample).unsqueeze(0)))
        finally:
            for handle in handles:
                handle.remove()
        return [(path, type(module).__name__, shapes.get(path, "not run")) for path, module in modules]


def _joined_outputs(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {layer: torch.cat([part[layer] for part in parts]) for layer in parts[0]}


def parameter_hash(module: nn.Module) -> str:
    """16 hex digits of a hash of ``module``'s state dict (names and bytes): the identity of a network passed from
    Python."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        # reshape(-1): a 0-d tensor (BatchNorm's num_batches_tracked) has no byte view; the bytes are the same
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def unknown_layer_message(module: nn.Module, path: str, model_name: str) -> str:
    """The error for a layer ``path`` that ``module`` lacks, naming the closest module paths."""
    names = [name for name, _ in module.named_modules() if name]
    near = difflib.get_close_matches(path, names, n=6, cutoff=0.4)
    if not near:  # fall back to the top-level children, which always orient the user
        near = [name for name, _ in module.named_children()]
    return (
        f"layer {path!r} not found in {model_name}. Closest module paths: {', '.join(near)}. "
        f"`dnd layers --config <config>` lists them all."
    )
