"""Target networks: loading, preprocessing, layer lookup by module path, and activation capture with hooks."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from dnd.config import TargetConfig, key_fields
from dnd.errors import DnDError, ModelLoadError
from dnd.halving import FittingBatches
from dnd.units import UnitMap

Preprocess = Callable[[Image.Image], torch.Tensor]
OFFLINE_HINT = "Without network access, use configs/offline.yaml or set target.weights to a local checkpoint."
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0
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
    #: layer's maps go through :func:`summary_reducer` and :func:`unit_maps_reducer`, which apply them.
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


def choose_memory_format(module: nn.Module, device: torch.device, setting: str) -> torch.memory_format:
    """The layout ``setting`` (``execution.memory_format``) names for ``module`` on ``device``. auto: channels-last
    for a network with 2-d convolutions on the CPU (faster there, see :mod:`dnd.cpu`) and on CUDA (where
    mixed-precision convolutions run faster in it), the default layout otherwise."""
    from dnd.cpu import memory_format

    if setting == "channels_last":
        return torch.channels_last
    if setting == "contiguous":
        return torch.contiguous_format
    if device.type == "cuda":
        convolutional = any(isinstance(layer, nn.Conv2d) for layer in module.modules())
        return torch.channels_last if convolutional else torch.contiguous_format
    return memory_format(module, device)


_GEOMETRIC = ("Resize", "CenterCrop")


def split_preprocess(preprocess: Preprocess) -> tuple[Callable[[Image.Image], Image.Image], Preprocess]:
    """Split preprocessing into ``(view, tensorize)``: geometry on PIL images, then tensor conversion.

    Understands torchvision ``Compose`` pipelines (leading Resize / CenterCrop steps are the view) and the
    ``ImageClassification`` presets of torchvision weights; anything else is all tensorize, with an identity view.
    """
    from torchvision import transforms
    from torchvision.transforms._presets import ImageClassification

    if isinstance(preprocess, ImageClassification):
        view = transforms.Compose(
            [
                transforms.Resize(preprocess.resize_size, preprocess.interpolation, antialias=preprocess.antialias),
                transforms.CenterCrop(preprocess.crop_size),
            ]
        )
        tensorize = transforms.Compose(
            [
                transforms.PILToTensor(),
                transforms.ConvertImageDtype(torch.float),
                transforms.Normalize(preprocess.mean, preprocess.std),
            ]
        )
        return view, tensorize
    if isinstance(preprocess, transforms.Compose):
        steps = list(preprocess.transforms)
        split = next((i for i, step in enumerate(steps) if type(step).__name__ not in _GEOMETRIC), len(steps))
        return transforms.Compose(steps[:split]), transforms.Compose(steps[split:])
    return _identity, preprocess


def _identity(image: Image.Image) -> Image.Image:
    return image


def summary_reducer(
    summary: str, tokens: str, units: UnitMap | None = None
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """A ``reduce`` for :meth:`TargetNetwork.capture` that summarises every layer like stage 1: ``[B, C]`` per
    neuron, or ``[B, n_units]`` per unit of ``units`` (pass the target's :attr:`TargetNetwork.units`)."""

    def reduce(layer: str, output: torch.Tensor) -> torch.Tensor:
        if units is None:
            return summarize(output, summary, tokens)
        return units.summaries(output, layer, lambda maps: summarize(maps, summary, tokens))

    return reduce


def unit_maps_reducer(units: UnitMap | None, selected: list[int]) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """A ``reduce`` for :meth:`TargetNetwork.capture` that keeps the maps of the ``selected`` units (neurons when
    ``units`` is None) in the layer's layout: ``[B, s, H, W]``, tokens ``[B, T, s]``, or ``[B, s]``."""

    def reduce(layer: str, output: torch.Tensor) -> torch.Tensor:
        if units is not None:
            return units.maps(output, layer, selected)
        return output[..., selected] if output.ndim == 3 else output[:, selected]

    return reduce


def unit_output_shape(units: UnitMap | None, shape: list[int]) -> list[int]:
    """The per-image shape of a layer's unit maps, for a layer output of per-image ``shape``."""
    return shape if units is None else units.output_shape(shape)


def summarize(output: torch.Tensor, summary: str, tokens: str) -> torch.Tensor:
    """Per-neuron summaries ``[B, C]`` (float32) of a layer output.

    Conv maps ``[B, C, H, W]``: spatial mean or max. Transformer tokens ``[B, T, C]``: the CLS token (token 0) or
    the mean over tokens. Linear outputs ``[B, C]`` are already one value per neuron.
    """
    if output.ndim == 4:
        reduced = output.mean(dim=(2, 3)) if summary == "mean" else output.amax(dim=(2, 3))
    elif output.ndim == 3:
        reduced = output[:, 0] if tokens == "cls" else output.mean(dim=1)
    elif output.ndim == 2:
        reduced = output
    else:
        raise DnDError(f"cannot summarise a layer output of shape {tuple(output.shape)} into one value per neuron")
    return reduced.float()


def parameter_hash(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        # reshape(-1): a 0-d tensor (BatchNorm's num_batches_tracked) has no byte view; the bytes are the same
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def unknown_layer_message(module: nn.Module, path: str, model_name: str) -> str:
    names = [name for name, _ in module.named_modules() if name]
    near = difflib.get_close_matches(path, names, n=6, cutoff=0.4)
    if not near:  # fall back to the top-level children, which always orient the user
        near = [name for name, _ in module.named_children()]
    return (
        f"layer {path!r} not found in {model_name}. Closest module paths: {', '.join(near)}. "
        f"`dnd layers --config <config>` lists them all."
    )


def resolve_device(device: str, gpu: int = 0) -> torch.device:
    """The device ``device`` (auto, cpu, cuda or cuda:N) names; ``auto`` and a bare ``cuda`` mean GPU ``gpu`` (the
    process's local rank in a job of several processes)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DnDError(f"device {device!r} is not valid: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DnDError(f"device {device!r} requested but CUDA is not available here: use device=cpu or auto")
    if resolved.type == "cuda" and resolved.index is None and gpu:
        if gpu >= torch.cuda.device_count():
            raise DnDError(
                f"this is process {gpu} on this machine but only {torch.cuda.device_count()} GPU(s) are visible: "
                f"start at most that many processes per machine (torchrun --nproc_per_node)"
            )
        resolved = torch.device("cuda", gpu)
    return resolved


# --- built-in networks --------------------------------------------------------------------------------------


def load_target(config: TargetConfig) -> TargetNetwork:
    """Load the network ``config`` names, with its pretrained (or ``config.weights``) weights, in eval mode."""
    identity = target_identity(config)  # checks the options before any weight is read
    kind = _builtin_kind(config.name)
    if kind == "efficientnet_lite0":
        module, preprocess = _efficientnet_lite0(config)
    elif kind == "cifar_resnet":
        module, preprocess = _cifar_resnet(config)
    else:
        module, preprocess = _torchvision(config)
    return TargetNetwork(config.name, module, preprocess, identity=identity)


def target_identity(config: TargetConfig) -> dict[str, Any]:
    """What cache keys know about the built-in network ``config`` names, computed without loading it.

    The config's fields, except that a torchvision network's ``weights_version`` is resolved to the weights enum
    member it stands for in this torchvision (an unset version, torchvision's DEFAULT, is keyed as the member DEFAULT
    points to, e.g. ``IMAGENET1K_V2`` for resnet50), and that ``weights_version`` and ``num_classes`` appear only
    where they apply and are set (so the keys of networks that do not use them are what they were before them).
    Raises :class:`DnDError` for an option the network does not take or an unknown weights version.
    """
    identity = key_fields(config)
    if config.num_classes is None:
        del identity["num_classes"]
    if _builtin_kind(config.name) == "torchvision":
        identity["weights_version"] = torchvision_weights(config).name
        return identity
    for option in ("weights_version", "num_classes"):
        if getattr(config, option) is not None:
            raise DnDError(
                f"target.{option} applies to torchvision networks, not to {config.name}: remove it from the config"
            )
    del identity["weights_version"]
    return identity


def torchvision_weights(config: TargetConfig) -> Any:
    """The torchvision weights enum member ``config.weights_version`` names (``DEFAULT`` when unset), without
    downloading anything: its ``url``, ``meta`` and ``transforms()`` are what :func:`load_target` uses.

    A version is a member name (``IMAGENET1K_V1``) or the enum's full name (``ResNet50_Weights.IMAGENET1K_V1``).
    """
    from torchvision import models

    available = models.list_models(module=models)
    if config.name not in available:
        near = difflib.get_close_matches(config.name, available, n=5, cutoff=0.5)
        closest = f" (closest: {', '.join(near)})" if near else ""
        raise DnDError(
            f"unknown target network {config.name!r}. Built in: efficientnet_lite0, cifar_resnet20, "
            f"cifar_resnet56, or a torchvision classifier{closest}."
        )
    weights_type = models.get_model_weights(config.name)
    version = (config.weights_version or "DEFAULT").removeprefix(f"{weights_type.__name__}.")
    try:
        return weights_type[version]
    except KeyError:
        versions = ", ".join([member.name for member in weights_type] + ["DEFAULT"])
        raise DnDError(
            f"target.weights_version {config.weights_version!r} is not a weights version of {config.name}; "
            f"set it to one of: {versions}"
        ) from None


def _builtin_kind(name: str) -> str:
    if name == "efficientnet_lite0":
        return "efficientnet_lite0"
    if name.startswith("cifar_resnet"):
        return "cifar_resnet"
    return "torchvision"


def _efficientnet_lite0(config: TargetConfig) -> tuple[nn.Module, Preprocess]:
    from dnd.models.efficientnet_lite import (
        efficientnet_lite0,
        efficientnet_lite0_preprocess,
        efficientnet_lite0_weights_path,
    )

    weights = config.weights if config.weights is not None else efficientnet_lite0_weights_path()
    return efficientnet_lite0(weights), efficientnet_lite0_preprocess()


def _cifar_resnet(config: TargetConfig) -> tuple[nn.Module, Preprocess]:
    depth = config.name.removeprefix("cifar_resnet")
    if not depth.isdigit():
        raise DnDError(f"target.name {config.name!r}: expected cifar_resnet<depth>, e.g. cifar_resnet20")
    if config.weights is None:
        raise DnDError(
            f"{config.name} has no downloadable default weights: set target.weights to a checkpoint "
            f"(e.g. ../shared/models/resnet20-12fca82f.th)"
        )
    from dnd.models.cifar_resnet import cifar_preprocess, cifar_resnet

    return cifar_resnet(int(depth), config.weights), cifar_preprocess()


def _torchvision(config: TargetConfig) -> tuple[nn.Module, Preprocess]:
    """A torchvision classifier with its pretrained weights (``weights_version``) or the checkpoint in
    ``config.weights``; either way with the preprocessing of the chosen weights version."""
    from torchvision import models

    weights = torchvision_weights(config)
    pretrained_classes = len(weights.meta["categories"])
    if config.weights is not None:
        return _torchvision_checkpoint(config, pretrained_classes), weights.transforms()
    if config.num_classes not in (None, pretrained_classes):
        raise DnDError(
            f"target.num_classes={config.num_classes}, but the pretrained {config.name} weights ({weights}) have "
            f"{pretrained_classes} classes: num_classes is for a checkpoint in target.weights"
        )
    module = models.get_model(config.name, weights=None)
    with _download_timeout():
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # urllib, socket and hash errors all mean "could not fetch"
            raise ModelLoadError(
                f"could not fetch the pretrained weights of {config.name} ({weights}, {weights.url}): "
                f"{type(exc).__name__}: {exc}. {OFFLINE_HINT}"
            ) from None
    module.load_state_dict(state)
    return module, weights.transforms()


def _torchvision_checkpoint(config: TargetConfig, default_classes: int) -> nn.Module:
    """The torchvision architecture ``config.name`` with the checkpoint ``config.weights`` loaded.

    Its classifier has ``config.num_classes`` outputs or, when that is unset, as many as the checkpoint's: when the
    only tensors that do not fit are the classifier's (those with ``default_classes`` rows have one other row count
    in the checkpoint), the network is built again with that many classes, e.g. 365 for Places365.
    """
    from torchvision import models

    from dnd.models.checkpoints import fit_state_dict, read_state_dict

    state = read_state_dict(config.weights)
    classes = config.num_classes or default_classes
    module = models.get_model(config.name, weights=None, num_classes=classes)
    if config.num_classes is None:
        found = _checkpoint_classes(module, state, default_classes)
        if found is not None:
            classes = found
            module = models.get_model(config.name, weights=None, num_classes=classes)
    fix = "Set target.name to the architecture the checkpoint was saved from" + (
        " and target.num_classes to its number of classes." if config.num_classes is not None else "."
    )
    fit_state_dict(module, state, str(config.weights), f"{config.name} with {classes} classes", fix)
    return module


def _checkpoint_classes(module: nn.Module, state: dict[str, torch.Tensor], default_classes: int) -> int | None:
    """The checkpoint's class count when only ``module``'s classifier tensors differ from it, else None."""
    from dnd.models.checkpoints import misfits

    mismatched, missing, unexpected = misfits(module, state)
    if not mismatched or missing or unexpected:
        return None
    expected = module.state_dict()
    counts = set()
    for key in mismatched:
        want, have = expected[key].shape, state[key].shape
        if want[0] != default_classes or len(want) != len(have) or want[1:] != have[1:]:
            return None
        counts.add(int(have[0]))
    return counts.pop() if len(counts) == 1 else None


@contextlib.contextmanager
def _download_timeout() -> Iterator[None]:
    """Bound each socket operation of a weight download, so a machine without network fails in seconds."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
