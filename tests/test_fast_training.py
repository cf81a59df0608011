"""The fast training loop: channels_last convolution nets resume bit for bit, evaluation
equals a plain NCHW pass, and the thread count is chosen from the free cores, recorded
and reused on resume."""

import json
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from helpers.commands import train_digits
from helpers.interrupt import interrupt_after_first_checkpoint

import bnnkit.training.threads as threads
from bnnkit.cli import main
from bnnkit.data import load_dataset
from bnnkit.recipe import load_recipe
from bnnkit.review import expand
from bnnkit.review.runner import execute, run_dir
from bnnkit.training import RunConfig, TrainOptions, evaluate, load_run, read_metrics, train
from bnnkit.training.checkpoint import load_state
from bnnkit.training.loop import memory_format
from bnnkit.training.optim import make_optimizer


def conv_config(epochs=2):
    recipe = load_recipe("embedded").with_(batch_size=64)
    return RunConfig(
        model="ebnn_cnn", dataset="digits", epochs=epochs, seed=5, recipe=recipe, model_options={"channels": [8, 16]}
    )


def quiet(**changes):
    return TrainOptions(progress=False, threads=1, **changes)


def test_a_channels_last_conv_net_resumes_bit_for_bit(tmp_path, monkeypatch):
    assert memory_format(conv_config().build_model()) == torch.channels_last
    train(conv_config(), tmp_path / "straight", quiet())
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train(conv_config(), tmp_path / "resumed", quiet())
    train(conv_config(), tmp_path / "resumed", quiet(resume=True))
    a, b = (safetensors.torch.load_file(tmp_path / d / "model.safetensors") for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(tmp_path / "straight")[-1]["test_loss"] == read_metrics(tmp_path / "resumed")[-1]["test_loss"]


def test_evaluation_equals_a_plain_nchw_pass(tmp_path):
    train(conv_config(epochs=1), tmp_path / "run", quiet())
    model = load_run(tmp_path / "run")[0]
    ds = load_dataset("digits", "test")
    loss, acc = evaluate(model, ds)
    x = torch.from_numpy(ds.x).float() / 255
    with torch.no_grad():
        logits = model.eval()(x)  # NCHW, no inference mode, one batch
    assert acc == (logits.argmax(1) == torch.from_numpy(ds.y)).sum().item() / len(ds.y)
    # binary sums are exact integers in either layout, so the losses agree to rounding of the sum
    assert loss == pytest.approx(F.cross_entropy(logits, torch.from_numpy(ds.y)).item(), rel=1e-6)


def test_adamw_is_the_fused_kernel_and_steps_like_the_reference():
    torch.manual_seed(0)
    model = RunConfig(
        model="small_cnn", dataset="digits", epochs=1, model_options={"width": 4, "hidden": 8}
    ).build_model()
    fused = make_optimizer(model, load_recipe("baseline").with_(weight_decay=0.01))
    assert all(g["fused"] for g in fused.param_groups) and any(g["weight_decay"] for g in fused.param_groups)
    twins = {id(p): p.detach().clone().requires_grad_() for p in model.parameters()}
    groups = [
        {"params": [twins[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]} for g in fused.param_groups
    ]
    plain = torch.optim.AdamW(groups, lr=1e-3, foreach=False)  # PyTorch's reference, one tensor at a time
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
            twins[id(p)].grad = p.grad.clone()
        fused.step()
        plain.step()
    for p in model.parameters():
        assert torch.allclose(p, twins[id(p)], rtol=1e-6, atol=1e-7)


# --- threads ----------------------------------------------------------------------------


def test_runnable_tasks_reads_the_running_count_without_the_reader(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.58 0.59 4/611 12345\n")
    assert threads.runnable_tasks(samples=3, interval=0, path=loadavg) == 3
    loadavg.write_text("garbage\n")
    assert threads.runnable_tasks(samples=1, path=loadavg) is None
    assert threads.runnable_tasks(samples=1, path=tmp_path / "missing") is None


@pytest.mark.parametrize(
    "cores, busy, processes, expected",
    [(8, 0.0, 1, 8), (8, 2.2, 1, 6), (8, 0.0, 2, 4), (8, 7.0, 2, 1), (2, 2.0, 1, 1), (2, 9.0, 1, 1), (2, 0.4, 1, 2)],
)
def test_auto_threads_are_the_free_cores_split_between_processes(monkeypatch, cores, busy, processes, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda: busy)
    assert threads.auto_threads(processes) == expected


def test_a_torchrun_job_splits_the_cores_between_its_local_processes(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.auto_threads() == 2


def test_cpu_hogs_on_every_core_leave_one_thread():
    cores = threads.available_cores()
    if cores > 8:
        pytest.skip("would start more than 8 busy processes")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert threads.busy_cores() >= cores - 0.5
        assert threads.auto_threads(1) == 1
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_requested_threads_win_then_the_environment_then_the_recorded_count_then_the_free_cores(monkeypatch):
    monkeypatch.setattr(threads, "auto_threads", lambda processes=None: 7)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(3, 2) == 3
    assert threads.choose_threads(None, 2) == 2
    assert threads.choose_threads(None, None) == 7
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.choose_threads(3, 2) == 3 and threads.choose_threads(None, 2) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: as if unset, as PyTorch does
    assert threads.choose_threads(None, 2) == 2
    with pytest.raises(threads.BnnkitError, match=r"^--threads must be an integer >= 1, got 0$"):
        threads.choose_threads(0)


def test_a_run_records_its_thread_count_and_a_resume_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "auto_threads", lambda processes=None: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = RunConfig(
        model="binarynet_mlp",
        dataset="digits",
        epochs=1,
        recipe=load_recipe("baseline").with_(batch_size=64),
        model_options={"width": 16, "depth": 1},
    )
    train(config, tmp_path / "run", TrainOptions(progress=False, threads=1))
    assert load_state(tmp_path / "run" / "train_state.pt")["threads"] == 1
    longer = RunConfig(**{**config.__dict__, "epochs": 2})
    before = torch.get_num_threads()
    try:
        train(longer, tmp_path / "run", TrainOptions(progress=False, resume=True))  # no --threads: the record, not 2
        assert [m["threads"] for m in read_metrics(tmp_path / "run")] == [1, 1]
        train(config, tmp_path / "fresh", TrainOptions(progress=False))
        assert read_metrics(tmp_path / "fresh")[0]["threads"] == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_review_workers_split_the_free_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    spec = expand(
        {
            "model": "binarynet_mlp",
            "model_options": {"width": 16},
            "dataset": "digits",
            "epochs": 1,
            "seeds": [0],
            "methods": [],
        }
    ).runs[0]
    before = torch.get_num_threads()
    try:
        assert execute(spec, str(tmp_path), None, 4)["status"] == "done"
    finally:
        torch.set_num_threads(before)
    assert read_metrics(run_dir(tmp_path, spec))[0]["threads"] == 2


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--model", "binarynet_mlp", "--dataset", "digits", "--out", "X"],
        ["review", "tiny.toml", "--out", "X"],
        ["fit", "--ram", "4K", "--flash", "32K", "--dataset", "digits", "--out", "X"],
    ],
)
def test_threads_below_one_is_a_one_line_error(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--threads", "0"]) == 2
    assert capsys.readouterr().err == "error: --threads must be >= 1, got 0\n"
    assert not (tmp_path / "X").exists()


def test_cli_threads_reach_the_training(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert (
            main(
                train_digits(
                    "binarynet_mlp", "--epochs", 1, "--threads", 1, "--out", tmp_path / "run", "--json", width=16
                )
            )
            == 0
        )
    finally:
        torch.set_num_threads(before)
    assert json.loads(capsys.readouterr().out)["threads"] == 1
    assert read_metrics(tmp_path / "run")[0]["threads"] == 1
