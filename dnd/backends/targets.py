"""The built-in target networks (EfficientNet-Lite0, CIFAR ResNets, torchvision classifiers): what cache keys know
about the one a config names, and loading it with its weights and preprocessing."""

from __future__ import annotations

import contextlib
import difflib
import socket
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dnd.backends.preprocess import Preprocess
from dnd.backends.target_network import TargetNetwork
from dnd.config import TargetConfig, key_fields
from dnd.errors import DnDError, ModelLoadError

OFFLINE_HINT = "Without network access, use configs/offline.yaml or set target.weights to a local checkpoint."
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0


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
