"""Files of a training run, each written atomically (``bnnkit.files.atomic_write``), so an
interruption at any instant leaves either the old file or the new one, never half of one.

Weights go to safetensors; the optimiser state goes through ``torch.save`` and is read back
with ``weights_only=True``, which admits tensors and plain containers only — no pickled
objects from a user's file are ever executed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write


def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, safetensors.torch.save(tensors, metadata=metadata))


def load_weights(path: str | Path, model: nn.Module) -> None:
    path = Path(path)
    try:
        tensors = safetensors.torch.load(path.read_bytes())
    except FileNotFoundError:
        raise BnnkitError(f"{path}: no such weights file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise BnnkitError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise BnnkitError(
            f"{path}: weights do not match the model in config.json "
            f"(missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''})"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise BnnkitError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise BnnkitError(
                f"{path}: {key} has non-finite values (NaN or Inf); the weights are corrupt or training diverged"
            )
    model.load_state_dict(tensors)


def save_state(path: str | Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def load_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BnnkitError(f"{path}: no training state to resume from") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise BnnkitError(f"{path}: unreadable training state ({type(exc).__name__}: {exc})") from None


def read_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BnnkitError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BnnkitError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise BnnkitError(f"{path}: {what} must be a JSON object")
    return data
