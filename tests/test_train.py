import json
import math

import pytest
import safetensors.torch
import torch
from helpers.interrupt import interrupt_after_first_checkpoint

from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.nn import bf16, binary_layers
from bnnkit.recipe import BASELINE
from bnnkit.training import RunConfig, TrainOptions, evaluate, load_run, read_metrics, train
from bnnkit.training.checkpoint import load_state
from bnnkit.training.optim import lr_factor, make_optimizer

QUIET = TrainOptions(progress=False)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Every training here on one thread: the default follows the machine's load, and two runs these tests
    compare bit for bit must not differ in their thread counts (float sums do)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def digits_config(epochs=2, **recipe_changes):
    recipe = BASELINE.with_(batch_size=64, **recipe_changes)
    return RunConfig(
        model="binarynet_mlp",
        dataset="digits",
        epochs=epochs,
        seed=3,
        recipe=recipe,
        model_options={"width": 64, "depth": 2},
    )


def test_run_directory_contents(tmp_path):
    result = train(digits_config(), tmp_path / "run", QUIET)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "curves.png",
        "metrics.jsonl",
        "model.safetensors",
        "train_state.pt",
    ]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert result["test_acc"] == metrics[-1]["test_acc"]
    state = load_state(run / "train_state.pt")  # weights_only: no arbitrary objects inside
    assert state["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["recipe"]["batch_size"] == 64


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_two_epochs_equal_one_plus_resume(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(bf16, "cpu_has_fast_bf16", lambda: True)  # oneDNN emulates bfloat16 where it lacks it
    first = TrainOptions(progress=False, grad_precision=precision)
    train(digits_config(epochs=2), tmp_path / "straight", first)
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(epochs=2), tmp_path / "resumed", first)
    assert [r["epoch"] for r in read_metrics(tmp_path / "resumed")] == [1]
    # No precision given: the resume takes the recorded one.
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
    assert [m["grad_precision"] for m in read_metrics(tmp_path / "resumed")] == [precision, precision]


def test_the_gradient_precisions_train_different_bits_and_unknown_ones_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bf16, "cpu_has_fast_bf16", lambda: True)
    weights = []
    for precision in ("float32", "bfloat16"):
        train(digits_config(epochs=1), tmp_path / precision, TrainOptions(progress=False, grad_precision=precision))
        weights.append(safetensors.torch.load_file(tmp_path / precision / "model.safetensors"))
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(BnnkitError, match="grad_precision must be one of float32, bfloat16, got 'fp16'"):
        TrainOptions(grad_precision="fp16")


def test_with_a_validation_split_the_test_set_is_read_once_and_the_run_is_the_same_bits(tmp_path, monkeypatch):
    from bnnkit.training import loop

    options = TrainOptions(progress=False, validation=300)
    once = train(digits_config(epochs=3), tmp_path / "once", options)
    with monkeypatch.context() as m:
        m.setattr(loop, "_tests_after", lambda epoch, epochs, validated: True)
        every = train(digits_config(epochs=3), tmp_path / "every", options)
    tested = [[k for k in ("val_acc", "test_acc") if k in r] for r in read_metrics(tmp_path / "once")]
    assert tested == [["val_acc"], ["val_acc"], ["val_acc", "test_acc"]]
    assert all("test_acc" in r for r in read_metrics(tmp_path / "every"))
    a, b = (safetensors.torch.load_file(tmp_path / d / "model.safetensors") for d in ("once", "every"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert once["test_acc"] == every["test_acc"] == once["best_test_acc"]
    assert every["best_test_acc"] >= every["test_acc"]
    # and without a split, every epoch's test accuracy as before
    plain = read_metrics(train(digits_config(epochs=2), tmp_path / "plain", QUIET)["out"])
    assert all("test_acc" in r and "val_acc" not in r for r in plain)


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


# --- what a run directory records and refuses ------------------------------------------------


def test_resume_refuses_another_data_subset_or_seed_naming_each_difference(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(epochs=3), run, TrainOptions(progress=False, limit_train=200))
    stored = json.loads((run / "config.json").read_text())
    assert (stored["limit_train"], stored["limit_test"]) == (200, None)
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    resume = TrainOptions(resume=True, progress=False)
    with pytest.raises(BnnkitError) as info:
        train(digits_config(epochs=3), run, resume)  # all 1,437 images, where epoch 1 saw 200
    assert str(info.value) == f"{run}/config.json describes a different run: limit_train 200 (stored) vs None (now)"
    other = RunConfig(**{**vars(digits_config(epochs=3)), "seed": 4})
    with pytest.raises(BnnkitError) as info:
        train(other, run, TrainOptions(resume=True, progress=False, limit_train=200, limit_test=100))
    assert (
        str(info.value)
        == f"{run}/config.json describes a different run: seed 3 (stored) vs 4 (now); limit_test None vs 100"
    )
    with pytest.raises(BnnkitError, match=r"recipe\.lr 0\.001 \(stored\) vs 0\.01 \(now\)$"):
        train(digits_config(epochs=3, lr=0.01), run, TrainOptions(resume=True, progress=False, limit_train=200))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # refused: nothing written
    # the recipe's name is a label, and epochs may grow: this continues the run
    renamed = digits_config(epochs=4).recipe.with_(name="renamed")
    train(
        RunConfig(**{**vars(digits_config(epochs=4)), "recipe": renamed}),
        run,
        TrainOptions(resume=True, progress=False, limit_train=200),
    )
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3, 4]


def test_a_config_json_from_before_the_limits_were_recorded_still_resumes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(), run, TrainOptions(progress=False, limit_train=200))
    old = json.loads((run / "config.json").read_text())
    del old["limit_train"], old["limit_test"]
    (run / "config.json").write_text(json.dumps(old))
    train(digits_config(), run, TrainOptions(resume=True, progress=False, limit_train=200))
    assert json.loads((run / "config.json").read_text())["limit_train"] == 200


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(tmp_path, monkeypatch):
    import bnnkit.training.loop as loop

    def disk_full(path, *args, **kwargs):
        raise BnnkitError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(loop, "save_weights", disk_full)
    with pytest.raises(BnnkitError, match="No space left"):
        train(digits_config(epochs=1), tmp_path / "a" / "b" / "run", QUIET)
    assert list(tmp_path.iterdir()) == []  # run/, b/ and a/ were created by train, and removed by it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(BnnkitError, match="No space left"):
        train(digits_config(epochs=1), mine, QUIET)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # the directory was the user's: kept, as it was


def test_a_failed_resume_keeps_every_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(epochs=2), run, QUIET)
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    with monkeypatch.context() as m:
        m.setattr("bnnkit.training.loop.save_weights", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(epochs=2), run, TrainOptions(resume=True, progress=False))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files


def test_bop_on_a_model_without_binary_weights_is_refused_before_the_directory(tmp_path):
    config = RunConfig(model="binarynet_mlp", dataset="digits", epochs=1, recipe="bop", model_options={"depth": 1})
    with pytest.raises(BnnkitError) as info:
        train(config, tmp_path / "run", QUIET)
    assert (
        str(info.value) == "recipe 'bop': Bop trains binary weights and the model has no binary layer; use adam or sgd"
    )
    assert not (tmp_path / "run").exists()


def test_run_config_takes_a_recipe_spec_and_checks_its_numbers():
    from bnnkit.recipe import load_recipe

    assert RunConfig("small_cnn", "digits", 1, recipe="embedded").recipe == load_recipe("embedded")
    assert RunConfig("small_cnn", "digits", 1, recipe="rsign+binary_first_last").recipe.learnable_threshold
    for changes, message in [
        ({"epochs": 0}, "epochs must be an integer in 1..1000000, got 0"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"seed": -1}, "seed must be an integer in 0.."),
        ({"recipe": "no_such"}, "unknown recipe 'no_such'"),
        ({"model_options": {"width": "wide"}}, "model small_cnn option width: expected an int"),
    ]:
        with pytest.raises(BnnkitError, match=message):
            RunConfig(**{"model": "small_cnn", "dataset": "digits", "epochs": 1, **changes})
    # options are kept as the builder takes them, so that a resume compares like with like
    assert RunConfig("ebnn_cnn", "digits", 1, model_options={"channels": "8,16"}).model_options == {"channels": [8, 16]}


# --- a model of the user's own ---------------------------------------------------------------


class TinyNet(torch.nn.Module):
    """A user's model for digits (1×8×8): a full-precision layer, a binary one, a classifier."""

    def __init__(self, width: int = 32):
        super().__init__()
        from bnnkit.nn import BinaryLinear

        self.body = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, width),
            torch.nn.BatchNorm1d(width),
            BinaryLinear(width, width),
            torch.nn.BatchNorm1d(width),
            torch.nn.Linear(width, 10),
        )

    def forward(self, x):
        return self.body(x)


class OtherNet(TinyNet):
    pass


def user_config(epochs=2):
    return RunConfig(
        model="tiny", dataset="digits", epochs=epochs, seed=5, recipe=BASELINE.with_(batch_size=64, latent_clip=0.5)
    )


def test_a_users_own_model_trains_resumes_and_loads_like_a_registry_one(tmp_path, monkeypatch):
    straight = train(user_config(), tmp_path / "straight", QUIET, model=TinyNet)
    stored = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert stored["model_class"] == "test_train:TinyNet" and stored["model"] == "tiny"
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(user_config(), tmp_path / "resumed", QUIET, model=TinyNet)
    resume = TrainOptions(resume=True, progress=False)
    with pytest.raises(BnnkitError) as info:  # bnnkit cannot build it: the user must give it again
        train(user_config(), tmp_path / "resumed", resume)
    assert str(info.value) == (
        f"{tmp_path / 'resumed'}: the run's model is the user's own test_train:TinyNet, which "
        "bnnkit cannot build: give it again (train(..., model=...), load_run(run_dir, model=...))"
    )
    with pytest.raises(
        BnnkitError, match="model_class 'test_train:TinyNet' \\(stored\\) vs 'test_train:OtherNet' \\(now\\)"
    ):
        train(user_config(), tmp_path / "resumed", resume, model=OtherNet)
    train(user_config(), tmp_path / "resumed", resume, model=TinyNet)
    a, b = (safetensors.torch.load_file(tmp_path / d / "model.safetensors") for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the factory is called after seeding

    with pytest.raises(BnnkitError) as info:
        load_run(tmp_path / "straight")
    assert str(info.value) == (
        f"{tmp_path / 'straight'}: the run's model is the user's own test_train:TinyNet, which "
        "bnnkit cannot build: give it again (train(..., model=...), load_run(run_dir, model=...))"
    )
    with pytest.raises(BnnkitError, match="the run's model is a test_train:TinyNet; model= gave a test_train:OtherNet"):
        load_run(tmp_path / "straight", model=OtherNet())
    model, config = load_run(tmp_path / "straight", model=TinyNet)
    assert config.model_class == "test_train:TinyNet"
    _, acc = evaluate(model, load_dataset("digits", "test"))
    assert acc == straight["test_acc"] > 0.5
    latent = [m.weight for m in binary_layers(model)]
    assert latent and max(w.abs().max().item() for w in latent) <= 0.5  # the recipe's clipping applied


def test_a_module_instance_is_trained_in_place(tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    train(user_config(epochs=1), tmp_path / "run", QUIET, model=net)
    saved = safetensors.torch.load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    with pytest.raises(
        BnnkitError, match="holds the registry model binarynet_mlp, which bnnkit builds: load it without model="
    ):
        train(digits_config(epochs=1), tmp_path / "registry", QUIET)
        load_run(tmp_path / "registry", model=TinyNet)


def test_user_models_are_refused_what_only_the_registry_can_do(tmp_path):
    with pytest.raises(
        BnnkitError, match="model= must be a torch nn.Module or a function of no arguments returning one, got int"
    ):
        train(user_config(), tmp_path / "a", QUIET, model=lambda: 3)
    with pytest.raises(BnnkitError, match="distillation trains a full-precision twin of a registry model"):
        train(RunConfig(**{**vars(user_config()), "recipe": "distillation"}), tmp_path / "b", QUIET, model=TinyNet)
    with pytest.raises(BnnkitError, match="model_options are for registry models"):
        train(RunConfig("tiny", "digits", 1, model_options={"width": 8}), tmp_path / "c", QUIET, model=TinyNet)
    assert list(tmp_path.iterdir()) == []


# --- the export warning of `bnnkit train` ------------------------------------------------------


def training_train_module():
    import bnnkit.training

    return bnnkit.training  # where cmd_train imports train from when it runs


def test_train_warns_before_training_a_run_that_will_not_export_and_its_advice_works(tmp_path, monkeypatch, capsys):
    from bnnkit.cli import main
    from bnnkit.training import distributed

    stderr_when = {}  # what stderr held when train() was called, and when the set-up ended (the loop starts next)
    real_train, real_wrap = training_train_module().train, distributed.wrap

    def spy_train(*args):
        stderr_when["train"] = capsys.readouterr().err
        return real_train(*args)

    def spy_wrap(*args):
        stderr_when["set up"] = capsys.readouterr().err
        return real_wrap(*args)

    monkeypatch.setattr(training_train_module(), "train", spy_train)
    monkeypatch.setattr(distributed, "wrap", spy_wrap)
    args = [
        "train",
        "--model",
        "ebnn_cnn",
        "--option",
        "channels=[8]",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--json",
    ]
    assert main([*args, "--out", str(tmp_path / "baseline")]) == 0
    assert (
        stderr_when["train"] == "" and capsys.readouterr().err == ""
    )  # once the run is set up, before the first epoch
    lines = stderr_when["set up"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: `bnnkit export` will refuse this run: cannot export layer")
    assert lines[0].endswith("; --recipe embedded trains one it takes")
    assert main(["export", str(tmp_path / "baseline"), "-o", str(tmp_path / "b.bnn"), "--check", "0"]) == 2
    # ... and the advice holds: no warning, and the export succeeds
    assert main([*args, "--recipe", "embedded", "--out", str(tmp_path / "embedded")]) == 0
    assert stderr_when["set up"] == "" and capsys.readouterr().err == ""
    assert main(["export", str(tmp_path / "embedded"), "-o", str(tmp_path / "e.bnn"), "--check", "0"]) == 0
    # a recipe of methods keeps them, with binary first and last layers
    assert main([*args, "--recipe", "rsign", "--out", str(tmp_path / "rsign")]) == 0
    assert stderr_when["set up"].endswith("; --recipe rsign+binary_first_last trains one it takes\n")
