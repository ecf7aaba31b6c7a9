"""Units of a layer other than its neurons: the latents of a sparse autoencoder (SAE) on the layer's output, or the
projections of its features on a set of directions (concept vectors).

A unit's map is computed from the layer's output at every spatial position (or token) before stage 1's summary, so
every stage that reads a layer's maps (record, crop's attention maps, score's activations on generated images, the
report's heat maps) sees units where it saw neurons. Each unit depends on the features alone (``f(x · w_u + b_u)``),
so any subset of units is computed exactly without the others, and summaries are computed a block of units at a
time: a 64k-latent SAE never holds ``[B, 64k, H, W]``.

Files read (``units.sae``):

- SAELens (``sae_weights.safetensors``; ViT-Prisma saves the same names): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
  optionally ``b_dec [d_in]`` and ``threshold [d_sae]`` (or ``log_threshold``) for JumpReLU SAEs. ``b_dec`` is
  subtracted from the input as ``cfg.json`` beside the file says (``apply_b_dec_to_input``, true when absent).
- saev (``sae.pt``: a JSON header line, then a torch state dict): the same names; saev's encoder does not subtract
  ``b_dec``.
- any ``.safetensors`` / ``.pt`` holding ``encoder.weight [d_sae, d_in]`` and ``encoder.bias [d_sae]`` (an
  ``nn.Linear`` encoder).

``units.directions``: a ``[n_units, d_in]`` matrix (``.safetensors`` or ``.pt`` with one tensor or a ``directions``
key, or ``.npy``); unit ``u`` is ``x · directions[u]``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dnd.errors import DnDError

if TYPE_CHECKING:
    from dnd.config import UnitsConfig

#: Summaries are computed this many unit values (batch × positions × units) at a time, at most: 128 MiB of float32.
BLOCK_VALUES = 1 << 25
#: A TopK SAE's latents depend on every other latent (only the k largest are kept) and a gated SAE's on a second
#: encoder, so neither is computed by this map.
_UNSUPPORTED_ACTIVATIONS = ("topk", "batchtopk", "gated")
_SAE_KEYS = "W_enc [d_in, d_sae] with b_enc [d_sae] (optionally b_dec [d_in], threshold [d_sae]) as SAELens and saev "
_SAE_KEYS += "save them, or encoder.weight [d_sae, d_in] with encoder.bias [d_sae]"


@dataclass
class UnitMap:
    """Units as ``f((x − centre) · encoder + bias)`` of a layer's features ``x [d_in]`` at each position.

    ``encoder [d_in, n_units]``; ``bias [n_units]`` or None; ``centre [d_in]`` (an SAE's ``b_dec``) or None; ``f`` is
    ReLU for an SAE (JumpReLU, zero below ``threshold [n_units]``, when given) and the identity for directions.
    ``identity`` is what cache keys know about the units (the file's content hash and how it is read).
    """

    kind: str
    source: Path
    encoder: torch.Tensor
    bias: torch.Tensor | None
    centre: torch.Tensor | None
    threshold: torch.Tensor | None
    rectified: bool
    identity: dict[str, Any]
    _on_device: dict[torch.device, tuple[torch.Tensor | None, ...]] = field(default_factory=dict, repr=False)

    @property
    def d_in(self) -> int:
        return self.encoder.shape[0]

    @property
    def n_units(self) -> int:
        return self.encoder.shape[1]

    def describe(self) -> str:
        """``units.sae ... ([d_in, n_units])`` for messages."""
        return f"units.{self.kind} {self.source} ([{self.d_in}, {self.n_units}])"

    def output_shape(self, shape: Sequence[int]) -> list[int]:
        """The per-image shape of the units' maps for a layer output of per-image ``shape`` ([C, H, W] → [U, H, W],
        [T, C] → [T, U], [C] → [U])."""
        shape = list(shape)
        shape[-1 if len(shape) == 2 else 0] = self.n_units
        return shape

    def maps(self, output: torch.Tensor, layer: str, units: Sequence[int] | None = None) -> torch.Tensor:
        """The maps of ``units`` (all when None) in the layout of ``output``: ``[B, C, H, W]`` → ``[B, u, H, W]``,
        tokens ``[B, T, C]`` → ``[B, T, u]``, ``[B, C]`` → ``[B, u]`` (float32, on ``output``'s device)."""
        features = self._features_last(output, layer)
        values = self._encode(features, torch.arange(self.n_units) if units is None else torch.as_tensor(units))
        return values.movedim(-1, 1) if output.ndim == 4 else values

    def summaries(
        self, output: torch.Tensor, layer: str, reduce: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``reduce`` (maps → ``[B, u]``) of every unit's maps ``[B, n_units]``, a block of units at a time so
        that at most :data:`BLOCK_VALUES` unit values exist at once."""
        positions = max(output[0].numel() // max(self.d_in, 1), 1) * output.shape[0]
        block = max(BLOCK_VALUES // positions, 1)
        parts = [
            reduce(self.maps(output, layer, range(start, min(start + block, self.n_units))))
            for start in range(0, self.n_units, block)
        ]
        return torch.cat(parts, dim=1)

    def _features_last(self, output: torch.Tensor, layer: str) -> torch.Tensor:
        """``output`` with its features on the last axis, in float32; checks their number against ``d_in``."""
        if output.ndim not in (2, 3, 4):
            raise DnDError(f"layer {layer}'s output of shape {list(output.shape)} has no feature axis for units")
        width = output.shape[1] if output.ndim != 3 else output.shape[2]
        if width != self.d_in:
            per_image = list(output.shape[1:])
            raise DnDError(
                f"{self.describe()} expects {self.d_in} features per position, but layer {layer} gives "
                f"{width} (output {per_image} per image): use the units of this layer, or set the layer they were "
                f"trained on"
            )
        return (output.movedim(1, -1) if output.ndim == 4 else output).float()

    def _encode(self, features: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        encoder, bias, centre, threshold = self._weights(features.device)
        units = units.to(features.device)
        if centre is not None:
            features = features - centre
        values = features @ encoder[:, units]
        if bias is not None:
            values = values + bias[units]
        if self.rectified:
            values = values.clamp_min(0)
        if threshold is not None:
            values = values * (values > threshold[units])
        return values

    def _weights(self, device: torch.device) -> tuple[Any, ...]:
        """The tensors on ``device``, copied there once (a 64k-latent encoder is hundreds of MB)."""
        if device not in self._on_device:
            tensors = (self.encoder, self.bias, self.centre, self.threshold)
            self._on_device[device] = tuple(None if t is None else t.to(device) for t in tensors)
        return self._on_device[device]


def load_units(config: UnitsConfig) -> UnitMap | None:
    """The units ``config`` (the ``units`` section) defines; None for the layer's neurons (neither file set).

    Raises :class:`DnDError` naming the file, the keys found and the keys and shapes expected.
    """
    if config.sae is not None and config.directions is not None:
        raise DnDError("units.sae and units.directions are both set: a run describes one kind of unit; keep one")
    if config.sae is not None:
        return _sae(Path(config.sae), config.subtract_b_dec)
    if config.directions is not None:
        return _directions(Path(config.directions))
    return None


def _sae(path: Path, subtract_b_dec: bool | None) -> UnitMap:
    tensors, header = _read_tensors(path, "sae")
    activation = str(header.get("activation", "relu")).lower()
    if activation in _UNSUPPORTED_ACTIVATIONS:
        raise DnDError(
            f"units.sae {path} is a {activation} SAE, whose latents are not one ReLU of the features each: "
            f"use a ReLU or JumpReLU SAE"
        )
    if "W_enc" in tensors:
        encoder, bias = tensors["W_enc"], tensors.get("b_enc")
    elif "encoder.weight" in tensors:
        encoder, bias = tensors["encoder.weight"].T, tensors.get("encoder.bias")
    else:
        raise DnDError(f"units.sae {path}: found keys {sorted(tensors)}; expected {_SAE_KEYS}")
    if encoder.ndim != 2:
        raise DnDError(f"units.sae {path}: the encoder has shape {list(encoder.shape)}; expected [d_in, d_sae]")
    d_in, d_sae = encoder.shape
    centre = tensors.get("b_dec")
    threshold = tensors.get("threshold")
    if threshold is None and "log_threshold" in tensors:
        threshold = tensors["log_threshold"].exp()
    for name, tensor, length in (("b_enc", bias, d_sae), ("b_dec", centre, d_in), ("threshold", threshold, d_sae)):
        if tensor is not None and list(tensor.shape) != [length]:
            raise DnDError(
                f"units.sae {path}: {name} has shape {list(tensor.shape)}, expected [{length}] for an encoder of "
                f"shape [d_in={d_in}, d_sae={d_sae}]"
            )
    subtract = header.get("apply_b_dec_to_input", True) if subtract_b_dec is None else subtract_b_dec
    if centre is None or not subtract:
        centre = None
    identity = {"sae": _file_hash(path), "subtract_b_dec": centre is not None}
    return UnitMap("sae", path, encoder.float(), _float(bias), _float(centre), _float(threshold), True, identity)


def _directions(path: Path) -> UnitMap:
    tensors, _ = _read_tensors(path, "directions")
    if len(tensors) == 1:
        (matrix,) = tensors.values()
    elif "directions" in tensors:
        matrix = tensors["directions"]
    else:
        raise DnDError(
            f"units.directions {path}: found keys {sorted(tensors)}; expected one tensor [n_units, d_in], or one "
            f"named 'directions'"
        )
    if matrix.ndim != 2:
        raise DnDError(f"units.directions {path}: the matrix has shape {list(matrix.shape)}; expected [n_units, d_in]")
    identity = {"directions": _file_hash(path)}
    return UnitMap("directions", path, matrix.float().T.contiguous(), None, None, None, False, identity)


def _float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float()


def _read_tensors(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of ``path`` by name, and what its format says about them: the ``activation`` and
    ``apply_b_dec_to_input`` of SAELens's ``cfg.json`` beside a ``.safetensors`` file or of saev's header."""
    setting = f"units.{kind} {path}"
    if not path.is_file():
        raise DnDError(f"{setting}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), _saelens_config(path.parent / "cfg.json")
        if suffix in (".pt", ".pth"):
            return _read_torch(path)
        if suffix == ".npy":
            import numpy as np

            return {"array": torch.from_numpy(np.load(path, allow_pickle=False))}, {}
    except DnDError:
        raise
    except Exception as exc:  # every reader has its own errors for a file that is not what its name says
        raise DnDError(
            f"{setting} is not a readable {suffix} tensor file ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    raise DnDError(f"{setting}: expected a .safetensors, .pt or .npy file")


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch file: a tensor, a dict of tensors, or saev's JSON header line followed by a state dict."""
    data = path.read_bytes()
    header: dict[str, Any] = {}
    if data.startswith(b"{"):
        line, _, data = data.partition(b"\n")
        saev = json.loads(line)
        activation = (saev.get("cfg") or saev).get("activation", "relu")
        header = {
            "activation": activation.get("cls", "relu") if isinstance(activation, dict) else activation,
            "apply_b_dec_to_input": False,  # saev's encoder adds b_enc to x · W_enc; b_dec only decodes
        }
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(loaded, torch.Tensor):
        return {"tensor": loaded}, header
    if isinstance(loaded, dict):
        return {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}, header
    raise DnDError(f"{path} holds a {type(loaded).__name__}, not a tensor or a dict of tensors")


def _saelens_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DnDError(f"{path} (the SAE's config beside its weights) is not valid JSON") from None
    found = {"activation": config.get("architecture", config.get("activation_fn_str", "relu"))}
    if found["activation"] in ("standard", "jumprelu"):
        found["activation"] = "relu"
    if "apply_b_dec_to_input" in config:
        found["apply_b_dec_to_input"] = bool(config["apply_b_dec_to_input"])
    return found


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TrainedSAE:
    """What :func:`train_sae` returns: the SAE's tensors under SAELens's names (``W_enc [d_in, d_sae]``, ``b_enc``,
    ``W_dec [d_sae, d_in]``, ``b_dec``) and its reconstruction error as a share of the features' variance."""

    tensors: dict[str, torch.Tensor]
    error_before: float
    error_after: float


def train_sae(
    features: torch.Tensor, latents: int, steps: int = 300, l1: float = 1e-3, lr: float = 3e-3, seed: int = 0
) -> TrainedSAE:
    """A small ReLU SAE on ``features [n, d_in]`` (a layer's features at every position of some images), trained
    full-batch with Adam on the mean squared error over the variance plus ``l1`` times the latents' mean magnitude.

    For trying SAE latents on a network no published SAE covers (a CNN layer), and for the tests and benchmarks;
    save ``tensors`` with ``safetensors.torch.save_file`` and point ``units.sae`` at the file.
    """
    generator = torch.Generator().manual_seed(seed)
    features = features.float()
    d_in = features.shape[1]
    w_enc = (torch.randn(d_in, latents, generator=generator) / d_in**0.5).requires_grad_()
    w_dec = w_enc.detach().T.clone().requires_grad_()  # tied at the start, free afterwards
    b_enc = torch.zeros(latents, requires_grad=True)
    b_dec = features.mean(dim=0).clone().requires_grad_()
    optimiser = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=lr)
    variance = (features - features.mean(dim=0)).pow(2).mean()

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu((features - b_dec) @ w_enc + b_enc)
        return (hidden @ w_dec + b_dec - features).pow(2).mean() / variance, hidden.abs().mean()

    with torch.no_grad():
        before = float(losses()[0])
    for _ in range(steps):
        error, magnitude = losses()
        optimiser.zero_grad()
        (error + l1 * magnitude).backward()
        optimiser.step()
    with torch.no_grad():
        after = float(losses()[0])
    tensors = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    return TrainedSAE({name: t.detach().contiguous() for name, t in tensors.items()}, before, after)
