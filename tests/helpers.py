"""Test helpers: tiny networks with hand-computable activations, image folders, configs and stand-in stages made on
the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from dnd.artifacts import NeuronResult, PerNeuronArtifact
from dnd.backends.container import Backends
from dnd.backends.target_network import TargetNetwork
from dnd.config import RunConfig, load_config
from dnd.stages.base import StageSpec, neuron_entry_type


class ChannelMixer(nn.Module):
    """A 1×1 conv whose feature maps can be computed by hand: ``conv`` channel 0 = red, 1 = green − blue.

    ``head`` (spatial mean of ``conv`` then a fixed linear map) gives a second, linear layer. ``forward_calls``
    counts forward passes, so tests can tell cached work from recomputed work.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]).view(2, 3, 1, 1))
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        self.forward_calls = 0
        self.fail_at_call: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        if self.fail_at_call is not None and self.forward_calls >= self.fail_at_call:
            raise KeyboardInterrupt("simulated kill")
        return self.head(self.conv(x).mean(dim=(2, 3)))


def to_tensor(image: Image.Image) -> torch.Tensor:
    return TF.to_tensor(image)


def write_images(folder: Path, count: int, size: int = 8, seed: int = 0) -> list[Path]:
    """``count`` random RGB PNGs named img000.png…; returns their paths in order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def make_config(tmp_path: Path, probe_path: Path, *overrides: str) -> RunConfig:
    """A run config over ``probe_path`` writing to ``tmp_path/outputs``, with ``key=value`` overrides."""
    base = [
        f"output_dir={tmp_path / 'outputs'}",
        f"probe.path={probe_path}",
        "probe.num_workers=0",
        "probe.batch_size=4",
        "name=test",
    ]
    return load_config(None, [*base, *overrides])


def stand_in_stage(
    name: str,
    needs: tuple[str, ...],
    artifact: type[PerNeuronArtifact],
    given: dict[int, Any],
    entry: Callable[[int, Any], NeuronResult],
    **fields: Any,
) -> StageSpec:
    """A per-neuron stage standing in for stage ``name``: neuron ``n``'s entry is ``entry(n, given[n])``, or a failure
    with ``given[n]`` as its reason when that is a string; the artifact's other fields are ``fields``."""
    failure = neuron_entry_type(artifact)  # a failed neuron's entry

    def compute(_ctx, work):
        entries = [
            failure(neuron=n, failed=given[n]) if isinstance(given[n], str) else entry(n, given[n])
            for n in work.neurons
        ]
        return artifact(layer=work.layer, neurons=entries, **fields), {}

    return StageSpec(name, 1, needs, (name,), artifact, compute=compute)


def backends_for(config: RunConfig, target: TargetNetwork) -> Backends:
    return Backends(config, target=target)


def write_cifar_config(tmp_path: Path, images: int = 12, **sections: dict) -> Path:
    """A YAML config for the built-in cifar_resnet20 with random weights over ``images`` random 32×32 images, writing
    under ``tmp_path``; each keyword updates that config section (e.g. ``record={"top_k": 4}``). Returns its path."""
    import yaml

    from dnd.models.cifar_resnet import cifar_resnet

    weights = tmp_path / "resnet20.th"
    tmp_path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save({"state_dict": cifar_resnet(20).state_dict()}, weights)
    write_images(tmp_path / "probe", images, size=32)
    config: dict = {
        "name": "cli",
        "target": {"name": "cifar_resnet20", "weights": str(weights)},
        "probe": {"kind": "folder", "path": str(tmp_path / "probe"), "batch_size": 5, "num_workers": 0},
        "output_dir": str(tmp_path / "outputs"),
        "device": "cpu",
    }
    for section, values in sections.items():
        config[section] = {**config[section], **values} if isinstance(config.get(section), dict) else values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stored_images(root: Path) -> list[Path]:
    """The file of every key in the image store at ``root`` (not the deduplicated pixel files they link to)."""
    return sorted(path for path in root.rglob("*.png") if "pixels" not in path.relative_to(root).parts)


def write_decompression_bomb(path: Path, side: int = 30_000) -> Path:
    """A PNG that claims ``side`` × ``side`` pixels (900 million by default) in a few hundred bytes: a valid header
    and one compressed row, so PIL refuses it as a decompression bomb the moment it reads the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    row = zlib.compress(b"\0" * (side + 1), 9)  # the first scanline only: what follows is "missing"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b""))
    return path
