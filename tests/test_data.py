"""Probing sets: folders, ImageNet-style classes, limits, fingerprints, missing and empty folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dnd.config import ProbeConfig
from dnd.data import UnreadableImage, open_probe, open_rgb
from dnd.errors import DnDError
from tests.helpers import write_images


def test_folder_probe_is_recursive_sorted_and_labelled_by_class_folder(tmp_path):
    write_images(tmp_path / "cat", 2)
    write_images(tmp_path / "airplane", 1)
    (tmp_path / "notes.txt").write_text("not an image")
    probe = open_probe(ProbeConfig(path=tmp_path))
    assert probe.ids == ["airplane/img000.png", "cat/img000.png", "cat/img001.png"]
    assert probe.class_names == ["airplane", "cat"]
    assert probe.labels == [0, 1, 1]
    assert probe.load(1).mode == "RGB"


def test_imagenet_val_classes_from_flat_wnid_names(tmp_path):
    for name in ["n02_b.JPEG", "n01_a.JPEG", "n01_c.JPEG"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="JPEG")
    probe = open_probe(ProbeConfig(kind="imagenet_val", path=tmp_path))
    assert probe.class_names == ["n01", "n02"]
    assert probe.labels == [0, 0, 1]


def test_limit_and_fingerprint(tmp_path):
    write_images(tmp_path, 5)
    full = open_probe(ProbeConfig(path=tmp_path))
    first = open_probe(ProbeConfig(path=tmp_path, limit=3))
    assert first.ids == full.ids[:3]
    assert first.fingerprint != full.fingerprint
    write_images(tmp_path / "extra", 1)
    assert open_probe(ProbeConfig(path=tmp_path)).fingerprint != full.fingerprint


def test_missing_empty_and_unset_folders_are_clear_errors(tmp_path):
    with pytest.raises(DnDError, match="does not exist"):
        open_probe(ProbeConfig(path=tmp_path / "nope"))
    with pytest.raises(DnDError, match=r"holds no images \(looked recursively for .*\.jpg"):
        open_probe(ProbeConfig(path=tmp_path))
    with pytest.raises(DnDError, match="probe.path is required"):
        open_probe(ProbeConfig())


def test_several_folders_are_probed_in_order_with_stable_content_keyed_ids(tmp_path):
    imagenet, broden = tmp_path / "imagenet" / "val", tmp_path / "broden1_224" / "images"
    write_images(imagenet / "n01440764", 2)
    write_images(broden, 3, seed=1)
    probe = open_probe(ProbeConfig(path=[imagenet, broden]))
    assert probe.ids == [
        "val/n01440764/img000.png",
        "val/n01440764/img001.png",
        "images/img000.png",
        "images/img001.png",
        "images/img002.png",
    ]
    assert probe.labels is None  # Broden's images have no class folder
    assert np.array_equal(np.asarray(probe.load(3)), np.asarray(Image.open(broden / "img001.png").convert("RGB")))

    # The ids and the fingerprint follow the images, not where the folders are, and change when the images do.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "imagenet").rename(moved / "imagenet")
    (tmp_path / "broden1_224").rename(moved / "broden1_224")
    imagenet, broden = moved / "imagenet" / "val", moved / "broden1_224" / "images"
    again = open_probe(ProbeConfig(path=[imagenet, broden]))
    assert (again.ids, again.fingerprint) == (probe.ids, probe.fingerprint)
    assert open_probe(ProbeConfig(path=[broden, imagenet])).fingerprint != probe.fingerprint
    (broden / "img002.png").write_bytes((broden / "img000.png").read_bytes() + b"more")
    assert open_probe(ProbeConfig(path=[imagenet, broden])).fingerprint != probe.fingerprint

    # One folder keeps its plain relative ids (and so the keys of earlier runs); same-named folders stay apart.
    assert open_probe(ProbeConfig(path=broden)).ids == ["img000.png", "img001.png", "img002.png"]
    other_val = tmp_path / "other" / "val"
    write_images(other_val, 1)
    assert open_probe(ProbeConfig(path=[imagenet, other_val])).ids[-1] == "val-2/img000.png"


def test_several_folders_fail_clearly(tmp_path):
    write_images(tmp_path / "a" / "inner", 1)
    (tmp_path / "empty").mkdir()
    a = tmp_path / "a"
    with pytest.raises(DnDError, match=r"a/inner lies inside .*/a, so its images would be probed twice"):
        open_probe(ProbeConfig(path=[a, a / "inner"]))
    with pytest.raises(DnDError, match="is the same folder as"):
        open_probe(ProbeConfig(path=[a, tmp_path / "a"]))
    with pytest.raises(DnDError, match=r"probe folder .*empty holds no images"):
        open_probe(ProbeConfig(path=[a, tmp_path / "empty"]))
    with pytest.raises(DnDError, match=r"probe folder .*missing does not exist"):
        open_probe(ProbeConfig(path=[a, tmp_path / "missing"]))
    with pytest.raises(DnDError, match="probe.path is required"):
        open_probe(ProbeConfig(path=[]))
    with pytest.raises(DnDError, match="reads one dataset root from probe.path, not a list"):
        open_probe(ProbeConfig(kind="cifar10", path=[a]))


def test_unreadable_image_raises_our_error(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(UnreadableImage):
        open_rgb(path)


def test_cifar_download_offline_is_a_clear_error(tmp_path, no_network):
    with pytest.raises(DnDError, match=r"could not download cifar10 .* use a folder probe"):
        open_probe(ProbeConfig(kind="cifar10", path=tmp_path))
