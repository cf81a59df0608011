import json
import math

import pytest
import safetensors.torch
import torch

from bnnkit.errors import BnnkitError
from bnnkit.nn import binary_layers
from bnnkit.recipe import BASELINE
from bnnkit.training import RunConfig, TrainOptions, evaluate, load_run, read_metrics, train
from bnnkit.training.checkpoint import load_state
from bnnkit.training.optim import lr_factor, make_optimizer
from bnnkit.data import load_dataset

QUIET = TrainOptions(progress=False)


def digits_config(epochs=2, **recipe_changes):
    recipe = BASELINE.with_(batch_size=64, **recipe_changes)
    return RunConfig(model="binarynet_mlp", dataset="digits", epochs=epochs, seed=3, recipe=recipe, model_options={"width": 64, "depth": 2})


def test_run_directory_contents(tmp_path):
    result = train(digits_config(), tmp_path / "run", QUIET)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "curves.png", "metrics.jsonl", "model.safetensors", "train_state.pt"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert result["test_acc"] == metrics[-1]["test_acc"]
    state = load_state(run / "train_state.pt")  # weights_only: no arbitrary objects inside
    assert state["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["recipe"]["batch_size"] == 64


def interrupt_after_first_checkpoint(monkeypatch):
    """Make the loop die (like Ctrl-C) right after its first epoch has been committed."""
    import bnnkit.training.loop as loop

    real = loop.save_state

    def save_then_die(path, state):
        real(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_state", save_then_die)


def test_two_epochs_equal_one_plus_resume(tmp_path, monkeypatch):
    train(digits_config(epochs=2), tmp_path / "straight", QUIET)
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(epochs=2), tmp_path / "resumed", QUIET)
    assert [r["epoch"] for r in read_metrics(tmp_path / "resumed")] == [1]
    train(digits_config(epochs=2), tmp_path / "resumed", TrainOptions(resume=True, progress=False))
    a = safetensors.torch.load_file(tmp_path / "straight" / "model.safetensors")
    b = safetensors.torch.load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = (load_state(tmp_path / d / "train_state.pt")["optimizer"] for d in ("straight", "resumed"))
    for i, st in sa["state"].items():
        assert torch.equal(st["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert read_metrics(tmp_path / "straight")[-1]["test_acc"] == read_metrics(tmp_path / "resumed")[-1]["test_acc"]


def test_resume_drops_metrics_beyond_the_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(epochs=2), run, QUIET)
    # As if the process died after writing metrics for an epoch whose checkpoint never landed.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "test_acc": 0.0}) + "\n")
    train(digits_config(epochs=2), run, TrainOptions(resume=True, progress=False))
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["test_acc"] > 0.0


def test_existing_run_needs_resume_and_the_same_config(tmp_path):
    run = tmp_path / "run"
    train(digits_config(epochs=1), run, QUIET)
    with pytest.raises(BnnkitError, match="pass --resume"):
        train(digits_config(epochs=1), run, QUIET)
    with pytest.raises(BnnkitError, match="different run"):
        train(digits_config(epochs=2, lr=0.01), run, TrainOptions(resume=True, progress=False))


def test_training_learns_and_the_saved_model_reproduces_the_accuracy(tmp_path):
    config = digits_config(epochs=4)
    result = train(config, tmp_path / "run", QUIET)
    assert result["test_acc"] > 0.85  # 10 classes: chance is 0.1
    model, loaded = load_run(tmp_path / "run")
    assert loaded == config
    _, acc = evaluate(model, load_dataset("digits", "test"))
    assert acc == result["test_acc"]


def test_latent_weights_stay_clipped(tmp_path):
    train(digits_config(epochs=1, lr=0.05, latent_clip=0.5), tmp_path / "run", QUIET)
    model, _ = load_run(tmp_path / "run")
    latent = [m.weight for m in binary_layers(model)]
    assert latent and max(w.abs().max().item() for w in latent) <= 0.5


def test_schedules_by_hand():
    cosine = BASELINE.with_(schedule="cosine", warmup_epochs=1)
    # 10 steps per epoch, 3 epochs: 10 warm-up steps, then cosine over the remaining 20.
    assert lr_factor(cosine, 0, 10, 3) == pytest.approx(1 / 11)
    assert lr_factor(cosine, 9, 10, 3) == pytest.approx(10 / 11)
    assert lr_factor(cosine, 10, 10, 3) == pytest.approx(1.0)
    assert lr_factor(cosine, 20, 10, 3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    step = BASELINE.with_(schedule="step")
    assert [lr_factor(step, s, 10, 4) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(BASELINE.with_(schedule="constant"), 35, 10, 4) == 1.0


def test_no_weight_decay_on_latent_binary_weights():
    config = digits_config(weight_decay=0.1)
    model = config.build_model()
    optimizer = make_optimizer(model, config.recipe)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    latent = binary_layers(model)
    assert latent and all(decay_of[id(m.weight)] == 0.0 for m in latent)
    fp_first = model.net[1]
    assert decay_of[id(fp_first.weight)] == 0.1
    assert len(decay_of) == len([p for p in model.parameters() if p.requires_grad])


# --- training-side repair methods: each must change the training in its documented way ----


def test_bop_flips_binary_weights_and_adam_trains_the_rest(tmp_path):
    config = digits_config(epochs=1, optimizer="bop", bop_gamma=1e-2, bop_threshold=1e-6)
    torch.manual_seed(config.seed)
    initial = [torch.where(m.weight >= 0, 1.0, -1.0) for m in binary_layers(config.build_model())]
    train(config, tmp_path / "run", QUIET)
    model, _ = load_run(tmp_path / "run")
    weights = [m.weight for m in binary_layers(model)]
    assert all(set(w.unique().tolist()) <= {-1.0, 1.0} for w in weights)  # no latent values
    flipped = sum((w != w0).sum().item() for w, w0 in zip(weights, initial))
    assert 0 < flipped < sum(w.numel() for w in weights)
    optimizer = make_optimizer(config.build_model(), config.recipe)
    assert [type(o).__name__ for o in optimizer.optimizers] == ["Bop", "AdamW"]


def test_bop_step_by_hand():
    from bnnkit.training.optim import Bop

    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5, -0.7]))
    bop = Bop([w], threshold=0.05, gamma=0.5)
    assert w.tolist() == [1, -1, 1, -1]
    w.grad = torch.tensor([0.2, 0.2, -0.2, -0.04])
    bop.step()  # m = 0.5 * g = [0.1, 0.1, -0.1, -0.02]: flip where |m| > 0.05 and sign(m) == sign(w)
    assert w.tolist() == [-1, -1, 1, -1]


def test_sgd_step_method_uses_sgd_with_step_decay():
    from bnnkit.recipe import load_recipe

    recipe = load_recipe("sgd_step")
    model = digits_config().build_model()
    assert type(make_optimizer(model, recipe)).__name__ == "SGD"
    assert lr_factor(recipe, 12, 10, 2) == pytest.approx(0.1) and recipe.lr == 0.1
    assert lr_factor(load_recipe("step_schedule"), 12, 10, 2) == pytest.approx(0.1)


def test_two_stage_first_half_trains_real_weights(tmp_path):
    # Epoch 1 of a two-stage run is epoch 1 of the same run with real-valued weights, bit
    # for bit; epoch 2 then binarizes them, so the runs part.
    train(digits_config(two_stage=True), tmp_path / "two", QUIET)
    train(digits_config(kernel_quantizer="identity"), tmp_path / "real", QUIET)
    two, real = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "real")
    assert two[0]["train_loss"] == real[0]["train_loss"]
    assert two[1]["train_loss"] != real[1]["train_loss"]
    plain = read_metrics(train(digits_config(), tmp_path / "plain", QUIET)["out"])
    assert two[0]["train_loss"] != plain[0]["train_loss"]


def test_distillation_trains_a_full_precision_teacher_then_matches_it(tmp_path):
    from bnnkit.training.loop import distribution_loss

    train(digits_config(epochs=1, distill=True), tmp_path / "kd", QUIET)
    teacher, teacher_config = load_run(tmp_path / "kd" / "teacher")
    assert teacher_config.recipe.input_quantizer == teacher_config.recipe.kernel_quantizer == "identity"
    assert not binary_layers(teacher)
    plain = train(digits_config(epochs=1), tmp_path / "plain", QUIET)
    assert read_metrics(tmp_path / "kd")[0]["train_loss"] != plain["train_loss"]
    logits = torch.randn(4, 10)
    assert distribution_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert distribution_loss(logits, torch.randn(4, 10)).item() > 0
