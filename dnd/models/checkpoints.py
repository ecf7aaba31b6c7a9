"""Checkpoint files: reading their tensors, and fitting them to a network with an error that names what does not fit.

``load_state_dict`` reports a mismatch as a long RuntimeError listing every tensor; :func:`fit_state_dict` checks
first and raises one :class:`~dnd.errors.ModelLoadError` naming the expected and found shapes, the missing and the
unexpected keys (a few of each) and how to fix it, so a wrong checkpoint never ends in a raw traceback.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dnd.errors import ModelLoadError

#: Keys of each kind named in an error (the rest are counted).
SHOWN_KEYS = 4


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint at ``path``, by parameter name.

    Accepts a plain state dict or a dict holding one under ``"state_dict"`` (as the Places365 and CIFAR ResNet
    checkpoints do), and removes the ``module.`` prefix ``nn.DataParallel`` adds. Only tensors are read
    (``weights_only``), so a file holding a whole pickled model, or no state dict at all, raises
    :class:`ModelLoadError` saying how to save one.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file not found: {path} (target.weights names a state-dict file)")
    save_hint = "save the weights with torch.save(model.state_dict(), path)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (a pickled model), RuntimeError / EOFError (not a checkpoint)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path} cannot be read as a state dict ({reason}): {save_hint}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} holds no state dict (a mapping of parameter names to tensors): {save_hint}")
    return {str(key).removeprefix("module."): value for key, value in state.items()}


def misfits(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """``(mismatched, missing, unexpected)`` keys of ``state`` against ``module``'s own state dict.

    A mismatched key is in both with different shapes; missing keys are only in the module, unexpected only in
    ``state``. BatchNorm's ``num_batches_tracked`` counter is never missing: checkpoints saved before PyTorch 0.4.1
    lack it and ``load_state_dict`` fills it in.
    """
    expected = module.state_dict()
    mismatched = [key for key, value in expected.items() if key in state and state[key].shape != value.shape]
    missing = [key for key in expected if key not in state and key.rpartition(".")[2] != "num_batches_tracked"]
    unexpected = [key for key in state if key not in expected]
    return mismatched, missing, unexpected


def fit_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str, network: str, fix: str) -> None:
    """Load ``state`` into ``module`` (strictly), or raise :class:`ModelLoadError` saying what does not fit.

    The message names ``source`` (the checkpoint file) and ``network``, each mismatched tensor with its expected
    and found shape, the missing and unexpected keys, and ends with ``fix``.
    """
    mismatched, missing, unexpected = misfits(module, state)
    if not (mismatched or missing or unexpected):
        module.load_state_dict(state, strict=True)
        return
    expected = module.state_dict()
    problems = [
        f"{key}: expected {list(expected[key].shape)}, found {list(state[key].shape)}"
        for key in mismatched[:SHOWN_KEYS]
    ]
    if len(mismatched) > SHOWN_KEYS:
        problems.append(f"{len(mismatched) - SHOWN_KEYS} more tensors of other shapes")
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{len(keys)} {kind} key(s): {', '.join(keys[:SHOWN_KEYS])}{more}")
    raise ModelLoadError(f"{source} does not fit {network}: {'; '.join(problems)}. {fix}")
