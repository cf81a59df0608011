"""The ``bnnkit`` command: thin wrappers over the library, one function per command.

Every user error ends in one line on stderr and exit status 2; ``--json`` prints exactly
one JSON object on stdout so results can be scripted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from bnnkit import __version__
from bnnkit.api import evaluate, expect_run_dir, load_graph
from bnnkit.cost import energy
from bnnkit.cost.formatting import render_table
from bnnkit.cost.graph_cost import device_layers, format_profile, profile
from bnnkit.data import DATASETS, canonical_name, get_info
from bnnkit.errors import BnnkitError
from bnnkit.recipe import METHODS, load_recipe
from bnnkit.runtime.c import write_sources
from bnnkit.runtime.cortex_m import build_mcu
from bnnkit.runtime.evaluate import run_graph
from bnnkit.runtime.host import build_host
from bnnkit.runtime.registry import RUNTIMES, device_runtimes


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        raise BnnkitError(f"{self.prog}: {message} (see {self.prog} --help)")


def _model_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _dataset(name: str) -> str:
    return canonical_name(name)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="architecture name (see `bnnkit models`)")
    p.add_argument("--dataset", required=True, type=_dataset, help="dataset name (see `bnnkit datasets`)")
    p.add_argument("--recipe", default="baseline", help="recipe name or .toml/.json file (default: baseline)")
    p.add_argument(
        "--option",
        action="append",
        type=_model_option,
        default=[],
        metavar="KEY=VALUE",
        help="model option, value in JSON or a list as 16,32 (e.g. width=64, channels=16,32); repeatable",
    )


def _add_graph_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", type=Path, metavar="MODEL.bnn")
    p.add_argument(
        "--allow-large-graph",
        action="store_true",
        help="raise the graph file's resource limits 64-fold (see docs/reliability.md, threat model)",
    )


def _load_graph(args: argparse.Namespace):
    return load_graph(args.graph, allow_large=args.allow_large_graph)


def _add_import_arg(p: argparse.ArgumentParser, dest: str) -> None:
    p.add_argument(
        "--import",
        dest=dest,
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, e.g. one that registers your models with "
        "@bnnkit.register_model (repeatable; the current directory is on the path)",
    )


def _import_modules(names: list[str]) -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script, unlike python -m, leaves it out
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise  # the module was found and its own imports failed: the user's traceback
            raise BnnkitError(
                f"--import {name}: no module named {exc.name!r} (run from its directory or set PYTHONPATH)"
            ) from None


def _emit(args: argparse.Namespace, result: Mapping[str, Any], text: str) -> None:
    print(json.dumps(result) if args.json else text)


def cmd_train(args: argparse.Namespace) -> None:
    from bnnkit.training import RunConfig, TrainOptions, distributed, train

    recipe = load_recipe(args.recipe)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    if overrides:
        recipe = recipe.with_(**overrides)
    config = RunConfig(
        model=args.model,
        dataset=args.dataset,
        epochs=args.epochs,
        seed=args.seed,
        recipe=recipe,
        model_options=dict(args.option),
        data_dir=args.data_dir,
    )
    warning = _export_warning(config, args.recipe)
    options = TrainOptions(
        resume=args.resume,
        device=args.device,
        progress=not args.json,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        validation=args.validation,
        threads=args.threads,
        grad_precision=args.grad_precision,
        warnings=(warning,) if warning else (),
    )
    result = train(config, args.out, options)
    reports = distributed.is_main()  # under torchrun: rank 0 reports for all
    distributed.shutdown()
    if not reports:
        return
    # With a validation split the test set is read once, so there is no best epoch of it to show.
    aside = f"validation {result['val_acc']:.4f}" if "val_acc" in result else f"best {result['best_test_acc']:.4f}"
    _emit(
        args,
        result,
        f"{config.model} on {config.dataset}: test accuracy {result['test_acc']:.4f} after {config.epochs} epochs"
        f" ({aside}); run in {args.out}",
    )


def _export_warning(config, recipe_text: str) -> str | None:
    """Why `bnnkit export` will refuse what this training makes, and the recipe it would
    take, or None. The exporter decides, on the untrained model: its layers and recipe are
    what training keeps."""
    from bnnkit.export import export_model  # torch

    in_shape = get_info(config.dataset).in_shape
    try:
        export_model(config.build_model(), in_shape)
        return None
    except BnnkitError as exc:
        reason = str(exc)
    fix = "`bnnkit export --format onnx` exports the float model"
    binary = config.recipe.with_(fp_first_layer=False, fp_last_layer=False)
    if binary != config.recipe:
        try:
            export_model(replace(config, recipe=binary).build_model(), in_shape)
        except BnnkitError as exc:
            fix = f"binary first and last layers would not do either ({exc}); {fix}"
        else:
            if Path(recipe_text).suffix in (".toml", ".json"):
                fix = f"set fp_first_layer = false and fp_last_layer = false in {recipe_text} to train one it takes"
            else:
                spec = "embedded" if recipe_text == "baseline" else f"{recipe_text}+binary_first_last"
                fix = f"--recipe {spec} trains one it takes"
    return f"`bnnkit export` will refuse this run: {reason}; {fix}"


def cmd_eval(args: argparse.Namespace) -> None:
    r = evaluate(expect_run_dir(args.run_dir, "eval"), args.dataset, data_dir=args.data_dir)
    _emit(
        args,
        r,
        f"{r['model']} on {r['dataset']} test set: accuracy {r['accuracy']:.4f} ({r['n']} images), "
        f"loss {r['loss']:.4f}",
    )


def cmd_summary(args: argparse.Namespace) -> None:
    from bnnkit.cost import format_table, layer_costs, totals  # torch
    from bnnkit.models import create_model

    info = get_info(args.dataset)
    model = create_model(args.model, info.num_classes, info.in_shape, args.recipe, **dict(args.option))
    rows = layer_costs(model, info.in_shape)
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "layers": [r.to_dict() for r in rows],
        "totals": totals(rows),
    }
    _emit(args, result, format_table(rows))


def cmd_demo(args: argparse.Namespace) -> None:
    from bnnkit.apps.demo import run_demo

    result = run_demo(out=args.out, epochs=args.epochs, data_dir=args.data_dir, progress=not args.json)
    _emit(args, result, result["message"])


def cmd_export(args: argparse.Namespace) -> None:
    if args.format == "onnx":
        from bnnkit.export.onnx import export_onnx

        if args.allow_approx or args.real != "float32":
            flag = "--allow-approx" if args.allow_approx else "--real"
            raise BnnkitError(f"{flag} is for the integer graph; the ONNX file is the float model itself")

        result = export_onnx(
            expect_run_dir(args.run_dir, "export"), args.output, check=args.check, data_dir=args.data_dir
        )
        _emit(
            args,
            result,
            f"exported the float model to {args.output}; on {result['n']} test images onnxruntime agrees with PyTorch "
            f"on {result['top1_agreement']:.2%} of labels (largest logit difference {result.get('max_abs_diff', 0):.3g}; "
            f"with onnxruntime's graph optimisations {result.get('top1_agreement_optimized', 1):.2%})",
        )
        return
    from bnnkit.analysis.agreement import export_and_check

    result = export_and_check(
        expect_run_dir(args.run_dir, "export"),
        args.output,
        check=args.check,
        allow_approx=args.allow_approx,
        data_dir=args.data_dir,
        real=args.real,
        calibration=args.calibration,
    )
    fixed = (
        f" (real stream in fixed point, F = {result['q32_fraction']}"
        + (f"; labels agree with the float32 graph on {result['float32_graph_agreement']:.2%}" if result["n"] else "")
        + ")"
        if args.real == "fixed"
        else ""
    )
    _emit(
        args,
        result,
        f"exported {result['ops']} ops to {args.output}; on {result['n']} test images the graph agrees with the "
        f"module on {result['top1_agreement']:.2%} of labels and {result['sign_agreement']:.4%} of binary activations"
        + fixed,
    )


def cmd_quantize(args: argparse.Namespace) -> None:
    from bnnkit.export.int8 import quantize_and_check

    run_dir = expect_run_dir(args.run_dir, "quantize")
    r = quantize_and_check(run_dir, args.output, args.calibration, args.check, args.data_dir)
    checked = (
        f"; on {r['n']} test images float {r['float_accuracy']:.4f}, int8 {r['int8_accuracy']:.4f}, "
        f"labels agree on {r['top1_agreement']:.2%}"
        if r["n"]
        else ""
    )
    _emit(args, r, f"quantized to int8: {r['ops']} ops in {args.output}, calibrated on {r['calibration_images']} "
                   f"training images{checked}")  # fmt: skip


def cmd_run(args: argparse.Namespace) -> None:
    graph = _load_graph(args)
    r = run_graph(graph, args.runtime, args.dataset, args.limit, args.data_dir, progress=not args.json)
    exact = "bit-identical scores" if r.bit_exact else "scores differ"
    text = (
        f"{args.graph} in {r.runtime} on {r.dataset} ({r.n} images): accuracy {r.accuracy:.4f}, "
        f"agreement with numpy {r.agreement:.2%} ({exact}); {r.seconds[r.runtime]:.2f} s in {r.runtime}"
        + ("" if r.runtime == "numpy" else f", {r.seconds['numpy']:.2f} s in numpy")
    )
    if r.device is not None:
        d = r.device
        text += (
            f"\n{d['target']} ({d['board']} in QEMU): flash {d['flash_bytes']:,} B (text {d['text']:,}, rodata "
            f"{d['rodata']:,}, data {d['data']:,}); RAM {d['ram_bytes']:,} B (data + bss {d['bss']:,} + stack used "
            f"{d['stack_bytes_used']:,}); {d['instructions_per_inference']:,.0f} instructions per inference "
            f"(mean of {d['instructions_counted_on']}), ~{d['latency_ms_estimate']:.1f} ms at "
            f"{d['clock_hz'] / 1e6:g} MHz ({d['part']}, {d['latency_model']})"
        )
        totals = profile(graph)["totals"]
        text += "\n" + "\n".join(energy.describe(totals["energy"], totals["binary_macs"], d))
    _emit(args, r.to_dict(), text)


def cmd_profile(args: argparse.Namespace) -> None:
    graph = _load_graph(args)
    result = profile(graph)
    if args.target:
        # sizes and stack do not depend on the image; instructions do a little (pools stop early),
        # so this counts one black image: `bnnkit run --runtime` counts real ones
        black = np.zeros((1, *graph.input_shape), np.uint8)
        with RUNTIMES[args.target].prepare(graph, progress=not args.json) as device:
            measured = device.predict(black).measured()
        with tempfile.TemporaryDirectory(prefix="bnnkit-mcu-") as work:
            per_step, whole = build_mcu(graph, work, args.target, layer_marks=True).layer_instructions(black)
        result["device"] = {**measured, **device_layers(graph, result, [float(n) for n in per_step], float(whole))}
    _emit(args, result, format_profile(result))


def cmd_codegen(args: argparse.Namespace) -> None:
    files = write_sources(_load_graph(args), args.output, args.prefix)
    _emit(args, {"files": [str(f) for f in files]}, "wrote " + ", ".join(str(f) for f in files))


def cmd_build(args: argparse.Namespace) -> None:
    graph = _load_graph(args)
    if args.target == "host":
        host = build_host(graph, args.output)
        result: dict[str, Any] = {"target": "host", "executable": str(host.executable)}
        text = f"built {host.executable} (reads uint8 images on stdin, writes float32 scores + int32 label per image)"
    else:
        image = build_mcu(graph, args.output, args.target, stack_size=args.stack_size)
        z = image.size
        result = {
            "target": args.target,
            "elf": str(image.elf),
            "board": image.target.machine,
            "flash_bytes": z.flash,
            "static_ram_bytes": z.static_ram,
            "text": z.text,
            "rodata": z.rodata,
            "data": z.data,
            "bss": z.bss,
        }
        text = (
            f"built {image.elf} for {args.target}: flash {z.flash:,} B (text {z.text:,}, rodata {z.rodata:,}, data "
            f"{z.data:,}), static RAM {z.static_ram:,} B + stack; `bnnkit run {args.graph} --runtime {args.target}` "
            f"runs it in QEMU {image.target.machine} (the harness reads bnnkit.in and writes bnnkit.out by semihosting)"
        )
    _emit(args, result, text)


def cmd_fit(args: argparse.Namespace) -> None:
    from bnnkit.apps.fit import fit, format_fit, parse_bytes

    result = fit(
        args.dataset,
        parse_bytes(args.ram),
        parse_bytes(args.flash),
        args.out,
        budget_minutes=args.budget_minutes,
        epochs=args.epochs,
        data_dir=args.data_dir,
        limit_train=args.limit_train,
        progress=not args.json,
        target=args.target,
        threads=args.threads,
    )
    _emit(args, result, format_fit(result))


def cmd_review(args: argparse.Namespace) -> None:
    from bnnkit.review import load_grid, methods_override, run_review

    given = {
        "epochs": args.epochs,
        "limit_train": args.limit_train,
        "limit_test": args.limit_test,
        "validation": args.validation,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if args.seeds is not None:
        try:
            overrides["seeds"] = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise BnnkitError(f"--seeds takes integers joined by commas, got {args.seeds!r}") from None
    if args.methods is not None:
        overrides.update(methods_override(args.methods))
    if args.data_dir is not None:
        overrides["data_dir"] = str(Path(args.data_dir).resolve())
    grid = load_grid(args.grid, overrides)
    for label, reason in grid.skipped:
        print(f"note: skipped {label}: {reason}", file=sys.stderr)
    result = run_review(
        grid,
        args.out,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        gpus_per_run=args.gpus_per_run,
        retry_failed=args.retry_failed,
        progress=not args.json,
        threads=args.threads,
        stage=args.stage,
        measure=args.measure,
    )
    _emit(args, result, _review_text(args, result))


def _review_text(args: argparse.Namespace, result: dict[str, Any]) -> str:
    lines = []
    if "runs" in result:
        lines.append(_review_counts(args, result, result["stage"] if result["stage"] != "all" else "screen"))
    if "screen_ranking" in result:
        ranked = ", ".join(f"{r['label']} {100 * r['delta_val']:+.2f}" for r in result["screen_ranking"])
        lines.append(f"screen ranking (validation Δ, points): {ranked}")
    if "confirm" in result:
        lines.append(_review_counts(args, result["confirm"], "confirm"))
    return "\n".join(lines)


def _review_counts(args: argparse.Namespace, result: dict[str, Any], stage: str) -> str:
    text = (
        f"{args.grid} ({stage}): {result['runs']} runs, {result['done']} done, {result['failed']} failed "
        f"({result['ran']} ran now); results in {result['store']}; tables and plots: bnnkit report {args.out}"
    )
    if result["failed"]:
        text += "\nfailed: " + ", ".join(f"{r['label']} (seed {r['seed']})" for r in result["failed_runs"])
        text += f"; errors in bnnkit report {args.out}; rerun them with --retry-failed"
    m = result.get("measure")
    if m and "skipped" in m:
        text += f"\nnote: not measured on {m['target']}: {m['skipped']}"
    elif m:
        text += f"\n{m['target']}: {m['measured']} runs measured, {m['refused']} refused (their recipe does not export)"
        text += f", {m['failed']} failed (rerun to retry)" if m["failed"] else ""
    return text


def cmd_report(args: argparse.Namespace) -> None:
    from bnnkit.review import write_report

    result = write_report(args.dir)
    _emit(
        args,
        result,
        (args.dir / "report.md").read_text()
        + "\nwrote "
        + ", ".join(result["files"][:2])
        + f" and {len(result['files']) - 2} plots in {args.dir / 'plots'}",
    )


def cmd_methods(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {"methods": {name: m.to_dict() for name, m in METHODS.items()}}
    lines = [("method", "category", "kind", "export", "inference cost", "source")]
    lines += [
        (m.name, m.category, m.kind, "yes" if m.exportable else "no", m.inference_cost, m.source)
        for m in METHODS.values()
    ]
    text = render_table(lines, left=6, total=False)
    if args.model:
        from bnnkit.cost import method_costs  # torch

        info = get_info(args.dataset)
        costs = method_costs(args.model, info.num_classes, info.in_shape, progress=not args.json, **dict(args.option))
        result.update(model=args.model, dataset=args.dataset, costs=costs)
        text += ["", f"cost of each method alone on {args.model} ({args.dataset}), change from the baseline:"]
        text += render_table(_cost_delta_lines(costs), left=1, total=False)
    _emit(args, result, "\n".join(text))


def _cost_delta_lines(costs: dict[str, dict]) -> list[tuple[str, ...]]:
    keys = ("params", "binary_macs", "fp_macs", "model_bytes", "peak_activation_bytes", "energy_pj")
    base = costs["baseline"]
    lines: list[tuple[str, ...]] = [
        ("method", "params", "binary MACs", "FP MACs", "model bytes", "peak act. bytes", "energy pJ")
    ]
    lines.append(("baseline", *(f"{base[k]:,.0f}" for k in keys)))
    for name, c in costs.items():
        if name != "baseline":
            lines.append((name, *(("n/a",) * len(keys) if "error" in c else (f"{c[k] - base[k]:+,.0f}" for k in keys))))
    return lines


def cmd_verify(args: argparse.Namespace) -> None:
    try:
        from bnnkit.analysis.robustness import verify_images
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("pysat"):
            raise
        raise BnnkitError('bnnkit verify needs PySAT: pip install "bnnkit[verify]"') from None
    result = verify_images(
        _load_graph(args),
        args.image,
        args.images,
        args.eps,
        args.timeout,
        args.dataset,
        args.data_dir,
        save=args.save,
        progress=not args.json,
        solver=args.solver,
        encoding=args.encoding,
    )
    _emit(args, result, _verify_table(result))


def _verify_table(result: dict) -> str:
    """One row per query. Robust means the graph's own label cannot change, right or
    wrong, so each row shows that label beside the true one."""
    lines = [
        f"{q['image']:>6} {q['eps']:>4} {q['label']:>5} {q['true_label']:>4} {_mark(q)} {q['status']:<15} "
        f"{q['seconds']:8.2f} s  {q['clauses']:>10,} clauses"
        + (
            f"  -> label {q['new_label']} (L∞ {q['linf']}, {q['changed_pixels']} pixels)"
            if q["new_label"] is not None
            else ""
        )
        for q in result["queries"]
    ]
    lines += [
        f"radius {eps}: {s['robust']} robust, {s['counterexample']} not robust, {s['timeout']} timed out; "
        f"median {s['median_seconds']:.2f} s, max {s['max_seconds']:.2f} s"
        for eps, s in result["summary"].items()
    ]
    wrong = {q["image"] for q in result["queries"] if q["label"] != q["true_label"]}
    if wrong:
        lines.append(f"x: {len(wrong)} misclassified image(s); robust there means the wrong label cannot change")
    return "\n".join(["image  eps label true    answer          time        CNF size"] + lines)


def _mark(query: dict) -> str:
    return " " if query["label"] == query["true_label"] else "x"


def cmd_list(args: argparse.Namespace) -> None:
    if args.command == "models":
        from bnnkit.models import model_names, model_options

        items: dict[str, Any] = {name: model_options(name) for name in model_names()}
        text = "\n".join(f"{name:16s} {', '.join(f'{k}={v}' for k, v in opts.items())}" for name, opts in items.items())
    else:
        items = {name: info.description for name, info in DATASETS.items()}
        text = "\n".join(f"{name:16s} {desc}" for name, desc in items.items())
    _emit(args, {args.command: items}, text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bnnkit", description="Train binarized neural networks and deploy them on tiny devices.")
    parser.add_argument("--version", action="version", version=f"bnnkit {__version__}")
    _add_import_arg(parser, "imports")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    models_built: list[_Parser] = []  # the commands that build models take --import too

    p = sub.add_parser(
        "train", help="train a model; writes DIR/model.safetensors, config.json, metrics.jsonl, curves.png"
    )
    _add_model_args(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    p.add_argument("--data-dir", help="where the dataset files are (default: $BNNKIT_DATA or the system location)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="override the recipe's batch size (under torchrun: the global batch, split over the processes)",
    )
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--limit-train", type=int, help="train on the first N images only (quick checks)")
    p.add_argument("--limit-test", type=int, help="test on the first N images only")
    p.add_argument(
        "--validation",
        type=int,
        metavar="N",
        help="hold out N training images (the review's fixed split) and report val_acc after every epoch",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads per training (default: the cores other processes leave free; a resume keeps its count)",
    )
    p.add_argument(
        "--grad-precision",
        choices=("float32", "bfloat16"),
        help="the binary layers' gradients (default: bfloat16 on a CPU that computes it natively, about 0.6x the "
        "float32 backward's time, else float32; a resume keeps its precision)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with the final metrics")
    p.set_defaults(fn=cmd_train)
    models_built.append(p)

    p = sub.add_parser("eval", help="test accuracy of a trained run")
    p.add_argument("run_dir", type=Path, metavar="DIR")
    p.add_argument("--dataset", type=_dataset, help="evaluate on another dataset of the same shape")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help='print {"accuracy", "loss", "n", ...}')
    p.set_defaults(fn=cmd_eval)
    models_built.append(p)

    p = sub.add_parser("summary", help="per-layer parameters, bits, binary vs FP MACs and memory")
    _add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_summary)
    models_built.append(p)

    p = sub.add_parser(
        "demo",
        help="the whole flow on data the install brings: train a binary CNN, export it, run it in numpy, C and on a Cortex-M4",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--epochs", type=int, help="default: chosen to finish in a few minutes on 2 CPU cores")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("export", help="trained run -> integer graph file, checked against the module")
    p.add_argument("run_dir", type=Path, metavar="DIR", help="a directory written by `bnnkit train`")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="file to write (model.bnn, or model.onnx with --format onnx)"
    )
    p.add_argument(
        "--check", type=int, default=1000, help="test images to compare module and graph on (default 1000; 0 skips)"
    )
    p.add_argument(
        "--allow-approx", action="store_true", help="export layers without an exact integer form, and report agreement"
    )
    p.add_argument(
        "--format",
        choices=("bnn", "onnx"),
        default="bnn",
        help="bnn: the integer graph (default); onnx: the float model, checked in onnxruntime (needs bnnkit[onnx])",
    )
    p.add_argument(
        "--real",
        choices=("float32", "fixed"),
        default="float32",
        help="number format of the real-valued stream: float32 (default; cores with an FPU) or fixed "
        "(q32 integers, for cores without one such as the Cortex-M3; docs/architecture.md)",
    )
    p.add_argument(
        "--calibration", type=int, default=2000, help="with --real fixed: training images that set the fraction"
    )
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_export)
    models_built.append(p)

    p = sub.add_parser(
        "quantize", help="trained float twin -> int8 graph file (the baseline a BNN is measured against)"
    )
    p.add_argument(
        "run_dir", type=Path, metavar="DIR", help="a `bnnkit train` directory of a float twin (docs/cortex-m.md)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="graph file to write (model.bnn)")
    p.add_argument("--calibration", type=int, default=2000, help="training images that set the activation scales")
    p.add_argument("--check", type=int, default=1000, help="test images to score float model and graph on (0 skips)")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_quantize)

    p = sub.add_parser("run", help="accuracy of a graph in a runtime, and its agreement with the numpy reference")
    _add_graph_args(p)
    # no argparse choices: a runtime that an --import module registers is checked when the command runs
    p.add_argument(
        "--runtime",
        default="numpy",
        metavar="RUNTIME",
        help=f"one of {', '.join(RUNTIMES)} (or one an --import module registers): numpy is the reference, "
        "c bnnkit's fast host kernels in-process, c-portable the generated C99 compiled on this host, "
        "cortex-m* the generated C99 on a Cortex-M core emulated in QEMU",
    )
    p.add_argument("--dataset", type=_dataset, help="default: the dataset the model was trained on")
    p.add_argument("--limit", type=int, help="first N test images only")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help='print {"accuracy", "agreement", "n", ...}')
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("profile", help="per layer: weight bytes, activation bytes, binary and FP ops; planned RAM")
    _add_graph_args(p)
    p.add_argument(
        "--target",
        choices=device_runtimes(),
        help="also build for this core and show what was measured in QEMU (per layer too) beside the analytic figures",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("codegen", help="write the C sources of a graph for your own build")
    _add_graph_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="directory for the .c and .h")
    p.add_argument("--prefix", default="bnn", help="C identifier prefix and file name (default bnn)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_codegen)

    p = sub.add_parser(
        "build", help="compile a graph for a Cortex-M core (an ELF for QEMU's MPS2 boards) or for this host"
    )
    _add_graph_args(p)
    p.add_argument("--target", required=True, choices=(*device_runtimes(), "host"))
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="build directory (sources, objects, the ELF or executable)"
    )
    p.add_argument(
        "--stack-size", type=int, default=8192, help="bytes reserved for the stack on a Cortex-M (default 8192)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("fit", help="find, train and keep the best binary network that fits a RAM and flash budget")
    p.add_argument("--ram", required=True, help="RAM budget: bytes, or e.g. 4K, 4KiB")
    p.add_argument("--flash", required=True, help="flash budget, as --ram")
    p.add_argument("--dataset", required=True, type=_dataset)
    p.add_argument(
        "--budget-minutes", type=float, default=10.0, help="stop starting new candidates after this (default 10)"
    )
    p.add_argument("--epochs", type=int, default=3, help="epochs per candidate (default 3)")
    p.add_argument(
        "--target",
        choices=device_runtimes(),
        help="measure each candidate's flash and RAM on this core in QEMU (default: the analytic memory plan)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/fit"), help="results, runs, best.bnn and pareto.png (resumable)"
    )
    p.add_argument("--limit-train", type=int, help="train on the first N images only")
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads per training (default: the cores other processes leave free; a resume keeps its count)",
    )
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser(
        "review", help="train a grid of repair methods x seeds into one SQLite store (resumable; local or Ray)"
    )
    p.add_argument(
        "grid",
        metavar="GRID",
        help="a grid .toml file, or the name of a preset shipped with bnnkit (a wrong name lists them)",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="review directory: review.sqlite and runs/ (rerun to resume)"
    )
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=1, help="runs at the same time (local: processes; ray: tasks)")
    p.add_argument("--address", help="Ray cluster address (default: start a local cluster of --workers CPUs)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each Ray task asks for (default 0)")
    p.add_argument("--retry-failed", action="store_true", help="run the failed runs again too")
    p.add_argument("--epochs", type=int, help="override the grid's epochs")
    p.add_argument("--seeds", help="override the grid's seeds, e.g. 0,1,2")
    p.add_argument("--methods", help="override the grid's methods and combinations, e.g. rsign,prelu,rsign+prelu")
    p.add_argument("--limit-train", type=int, help="train on the first N images only")
    p.add_argument("--limit-test", type=int, help="test on the first N images only")
    p.add_argument("--validation", type=int, help="override the grid's validation: training images held out")
    p.add_argument(
        "--threads",
        type=int,
        help="threads per run (default: the free cores split between the --workers; ray: 1, one CPU per task)",
    )
    p.add_argument("--data-dir")
    p.add_argument(
        "--stage",
        choices=("screen", "confirm", "all"),
        default="screen",
        help="screen: the grid; confirm: its [review.confirm] runs, chosen on the finished screen's validation"
        " accuracy; all: both (default screen)",
    )
    p.add_argument(
        "--measure",
        choices=device_runtimes(),
        help="after training, build each finished run's graph for this device (e.g. cortex-m4), run 5 test images in"
        " QEMU and store flash, RAM, instructions and energy (default: the grid's measure key; rerun to resume)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    p.set_defaults(fn=cmd_review)

    p = sub.add_parser("report", help="tables (report.md, report.csv) and plots of a review directory")
    p.add_argument("dir", type=Path, metavar="DIR", help="a directory written by `bnnkit review`")
    p.add_argument("--json", action="store_true", help='print {"rows": [...], "files": [...]}')
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser(
        "verify",
        help="prove a graph's label robust within an L∞ radius of a test image, or find a counterexample (SAT)",
    )
    _add_graph_args(p)
    p.add_argument("--image", type=int, required=True, help="index of the (first) test image")
    p.add_argument("--images", type=int, default=1, help="verify this many test images from --image on (default 1)")
    p.add_argument("--eps", type=int, nargs="+", default=[1], metavar="K", help="L∞ radii in pixel values (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per query, encoding included (default 60)")
    p.add_argument("--dataset", type=_dataset, help="default: the dataset the model was trained on")
    p.add_argument("--save", type=Path, help="directory for counterexample images (uint8 .npy)")
    p.add_argument(
        "--solver",
        default="glucose4",
        help="PySAT solver name (default glucose4; the native encoding needs minicard, gluecard3 or gluecard4)",
    )
    p.add_argument(
        "--encoding",
        default="seqcounter",
        help="cardinality encoding: a PySAT CardEnc one (seqcounter "
        "(default), totalizer, kmtotalizer, ...) or native (the solver's own at-most constraints)",
    )
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser(
        "methods",
        help="the repair-method catalogue: category, inference cost, source; with --model, measured cost deltas",
    )
    p.add_argument("--model", help="also compute each method's cost on this architecture")
    p.add_argument(
        "--dataset", default="cifar10", type=_dataset, help="input shape and classes for --model (default cifar10)"
    )
    p.add_argument(
        "--option",
        action="append",
        type=_model_option,
        default=[],
        metavar="KEY=VALUE",
        help="model option for --model",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_methods)
    models_built.append(p)

    for name, what in (
        ("models", "architectures and their options"),
        ("datasets", "datasets and where they come from"),
    ):
        p = sub.add_parser(name, help=f"list {what}")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=cmd_list)
        models_built.append(p)
    for p in models_built:  # also after the command, where people put options
        _add_import_arg(p, "command_imports")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "epochs", None) is not None and args.epochs < 1:
            raise BnnkitError(f"--epochs must be >= 1, got {args.epochs}")
        if getattr(args, "threads", None) is not None and args.threads < 1:
            raise BnnkitError(f"--threads must be >= 1, got {args.threads}")
        _import_modules(args.imports + getattr(args, "command_imports", []))
        args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        # The reader went away (`bnnkit methods --json | head`): what Python's documentation
        # prescribes — stdout to devnull so the exit's flush cannot fail again, no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except BnnkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    return 0


def run() -> NoReturn:
    """The ``bnnkit`` command: `main`, then exit with its status.

    A process started by torchrun leaves without the interpreter's teardown: its process
    group is already destroyed (`distributed.shutdown`), but gloo's threads can still hold
    tensors whose release at finalization needs the GIL, and that aborts the rank (SIGABRT,
    "terminate called without an active exception") after all its work is done, as CI
    saw twice in tests/test_distributed.py."""
    code = main()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun's variables, see distributed.launched
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
