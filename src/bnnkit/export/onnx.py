"""Trained run → ONNX file of the latent/float model (eval mode), checked in onnxruntime.

The file computes what the PyTorch module computes, op for op: the binarizers' forward
is ``where(x >= 0, 1, -1)`` (their custom autograd only changes the backward, which an
inference graph does not have), weight binarization is folded into ±1 constants, and
BatchNormalization stays a node of its own. That last point matters. A binary layer's
sum of ±1 products is an exact integer, and with BN kept apart both runtimes compare that
same integer with the same threshold; folding BN's scale into the conv weights (as the
ONNX exporter's optimiser and onnxruntime's graph optimisations do) turns the sum into
one of float products, rounded in another order, and a sum sitting exactly on a
threshold can then land on either side of the sign, flipping a label.

So the check runs the file with onnxruntime's graph optimisations off — the file's own
meaning — and requires every label to agree with PyTorch; it also reports the agreement
with onnxruntime's default optimisations, which is what a deployment gets (see
docs/distributed-and-onnx.md for measured figures).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write
from bnnkit.nn import bf16
from bnnkit.training.run import load_run

INPUT, OUTPUT = "images", "logits"


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript.optimizer
    except ImportError as exc:
        raise BnnkitError(
            f"ONNX export needs the onnx extra ({exc.name} is missing): pip install bnnkit[onnx]"
        ) from None
    return onnxruntime, onnxscript.optimizer


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs optional-dependency notes and deprecation warnings on stderr."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx(model: torch.nn.Module, in_shape, meta: dict[str, str] | None = None) -> bytes:
    """The serialised ONNX model of ``model`` (eval mode): input ``images``, float32
    (N, C, H, W) in [0, 1] (pixel / 255), output ``logits`` (N, classes); N is free."""
    _, optimizer = _require()
    model.eval()
    example = torch.zeros(2, *in_shape)  # batch 2: a batch of 1 would be specialised away
    try:
        with _quiet_exporter(), bf16.float32_only():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                optimize=False,
                verbose=False,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except Exception as exc:  # the exporter raises many types, all of them "this model does not export"
        raise BnnkitError(f"torch.onnx.export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if program is None:  # what the legacy exporter (dynamo=False) returns
        raise BnnkitError("torch.onnx.export returned no ONNX program")
    # Constant folding binarizes the weights once; the default optimiser would also fuse
    # BN into the convs, which this module keeps apart (see the docstring).
    optimizer.fold_constants(program.model, onnx_shape_inference=True)
    optimizer.remove_unused_nodes(program.model)
    proto = program.model_proto
    for key, value in (meta or {}).items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def run_onnx(model_bytes: bytes, x: np.ndarray, optimized: bool = False) -> np.ndarray:
    """Logits of the ONNX model for uint8 images ``x`` in onnxruntime on the CPU; graph
    optimisations off unless ``optimized``."""
    ort, _ = _require()
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: x.astype(np.float32) / 255})[0]


class OnnxComparison(TypedDict):
    n: int
    top1_agreement: float
    max_abs_diff: float
    top1_agreement_optimized: float  # at onnxruntime's default graph optimisations
    max_abs_diff_optimized: float


def compare_onnx(model: torch.nn.Module, model_bytes: bytes, x: np.ndarray) -> OnnxComparison:
    """PyTorch vs onnxruntime on uint8 images ``x``: top-1 agreement and the largest
    absolute logit difference, with optimisations off and at onnxruntime's default."""
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x).float().div_(255)).numpy()

    def agreement(out: np.ndarray) -> float:
        return float(np.mean(out.argmax(1) == ref.argmax(1))) if len(x) else 1.0

    def diff(out: np.ndarray) -> float:
        return float(np.abs(out - ref).max()) if len(x) else 0.0

    plain, optimized = run_onnx(model_bytes, x), run_onnx(model_bytes, x, optimized=True)
    return OnnxComparison(
        n=len(x),
        top1_agreement=agreement(plain),
        max_abs_diff=diff(plain),
        top1_agreement_optimized=agreement(optimized),
        max_abs_diff_optimized=diff(optimized),
    )


def export_onnx(
    run_dir: str | Path, output: str | Path, check: int = 1000, data_dir: str | None = None
) -> dict[str, Any]:
    """``bnnkit export --format onnx``: write the ONNX file of a run, then run it in
    onnxruntime on the first ``check`` test images against PyTorch."""
    if check < 0:
        raise BnnkitError(f"--check must be >= 0, got {check}")
    _require()
    model, config = load_run(run_dir)
    meta = {
        "bnnkit_model": config.model,
        "bnnkit_dataset": config.dataset,
        "bnnkit_recipe": config.recipe.name,
        "input": "float32 NCHW, pixel / 255",
    }
    data = to_onnx(model, config.to_dict()["in_shape"], meta)
    result: dict[str, Any] = {
        "output": str(output),
        "format": "onnx",
        "bytes": len(data),
        "n": 0,
        "top1_agreement": 1.0,
    }
    if check:
        x = load_dataset(config.dataset, "test", data_dir or config.data_dir).x[:check]
        result.update(compare_onnx(model, data, x))
        if result["top1_agreement"] < 1.0:
            raise BnnkitError(
                f"{run_dir}: in onnxruntime the exported model's labels differ from PyTorch's on "
                f"{1 - result['top1_agreement']:.2%} of {result['n']} test images (largest logit difference "
                f"{result['max_abs_diff']:.3g}); {output} was not written"
            )
    atomic_write(output, data)
    return result
