"""An ImageNet classifier as an offline stand-in for BLIP and CLIP: class probabilities and pooled features.

One forward pass gives both: the softmax over the classifier's 1,000 ImageNet classes (captions name the top ones,
:class:`dnd.backends.captioners.ClassifierCaptioner`) and the input of its final linear layer, the pooled penultimate
features (image embeddings for stage 6, :class:`dnd.backends.embedders.ClassifierImageEmbedder`). The network is
loaded like a target network (:func:`dnd.backends.targets.load_target`), so EfficientNet-Lite0 comes from its pip
package and any torchvision classifier from its default weights; class names are torchvision's ImageNet category
names, which ship inside torchvision (nothing is downloaded for them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dnd.config import ClassifierConfig, TargetConfig
from dnd.errors import DnDError

if TYPE_CHECKING:
    from PIL import Image

    from dnd.backends.target_network import TargetNetwork

#: Built-in networks trained on ImageNet-1k whose outputs follow torchvision's class order.
IMAGENET_BUILT_INS = ("efficientnet_lite0",)


def classifier_name(config: ClassifierConfig) -> str:
    """``<network>`` or ``<network>@<weights file>``: what cache keys know about the classifier."""
    return config.name if config.weights is None else f"{config.name}@{config.weights}"


def imagenet_categories(name: str, setting: str) -> list[str]:
    """The 1,000 ImageNet class names of classifier ``name`` in output order (torchvision's metadata, no download).

    ``setting`` names the config key in the error raised for a network that is not an ImageNet classifier.
    """
    from torchvision import models

    if name in IMAGENET_BUILT_INS:
        return list(models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    if name not in models.list_models(module=models):
        raise DnDError(
            f"{setting} {name!r} is not an ImageNet classifier: use efficientnet_lite0 (offline) or a torchvision "
            f"classifier name such as resnet50 or convnext_tiny"
        )
    return list(models.get_model_weights(name).DEFAULT.meta["categories"])


class ImageClassifier:
    """An ImageNet classifier in eval mode, loaded once: probabilities and features of a batch in one pass.

    ``name`` is :func:`classifier_name`; ``categories[k]`` names output ``k``; ``feature_size`` is the width of the
    penultimate features.
    """

    def __init__(self, config: ClassifierConfig, device: torch.device | str, setting: str = "classifier"):
        from dnd.backends.targets import load_target

        self.name = classifier_name(config)
        self.categories = imagenet_categories(config.name, f"{setting}.name")
        try:
            network = load_target(TargetConfig(name=config.name, weights=config.weights))
        except DnDError as exc:  # its advice names target.weights: here the classifier's own setting is meant
            message = str(exc).replace("target.weights", f"{setting}.weights")
            raise type(exc)(f"{setting}.name {config.name!r}: {message}") from None
        self.network: TargetNetwork = network.to(device)
        self.head = _final_linear(self.network.module, len(self.categories), f"{setting}.name {config.name!r}")
        self.feature_size = self.head.in_features

    @torch.no_grad()
    def run(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probabilities [B, n_classes], features [B, feature_size])`` of ``images`` (RGB, any size), float32 on
        the CPU; each image goes through the classifier's own preprocessing. A batch that runs out of CUDA memory is
        split and run in halves."""
        if not images:
            return torch.empty(0, len(self.categories)), torch.empty(0, self.feature_size)
        return self.network.batches.run(self._run, images, _joined_pairs)

    def _run(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def keep_input(_module: nn.Module, inputs: Any) -> None:
            captured.append(inputs[0].flatten(1))

        pixels = torch.stack([self.network.preprocess(image) for image in images])
        handle = self.head.register_forward_pre_hook(keep_input)
        try:
            logits = self.network.forward(pixels)
        finally:
            handle.remove()
        return logits.float().softmax(dim=-1).cpu(), captured[0].float().cpu()


def _joined_pairs(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])


def _final_linear(module: nn.Module, n_classes: int, what: str) -> nn.Linear:
    """The last ``nn.Linear`` of ``module`` with ``n_classes`` outputs: its input is the pooled penultimate feature."""
    heads = [layer for layer in module.modules() if isinstance(layer, nn.Linear) and layer.out_features == n_classes]
    if not heads:
        raise DnDError(
            f"{what} has no final linear layer with {n_classes} outputs to take class scores and features from; "
            f"choose another classifier (e.g. efficientnet_lite0 or resnet50)"
        )
    return heads[-1]
