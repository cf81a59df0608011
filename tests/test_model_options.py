"""Model options: checked per model against the types of its builder's defaults, one error
line with a valid example, and the shell-safe list spelling ``channels=16,32``."""

import json
import re

import pytest
import torch

from bnnkit.cli import _model_option, main
from bnnkit.errors import BnnkitError
from bnnkit.models import create_model, model_names, model_options
from bnnkit.models.registry import RANGES, check_options


@pytest.mark.parametrize(
    "model, option, value, message",
    [
        (
            "ebnn_cnn",
            "channels",
            16,
            "model ebnn_cnn option channels: expected a list of ints like channels=[16,32], got 16",
        ),
        (
            "ebnn_cnn",
            "channels",
            "16;32",
            "model ebnn_cnn option channels: expected a list of ints like channels=[16,32], got '16;32'",
        ),
        (
            "ebnn_cnn",
            "channels",
            [16, True],
            "model ebnn_cnn option channels: expected a list of ints like channels=[16,32], got [16, True]",
        ),
        (
            "ebnn_cnn",
            "channels",
            [],
            "model ebnn_cnn option channels: expected a list of ints like channels=[16,32], got []",
        ),
        (
            "ebnn_cnn",
            "channels",
            [16, 0],
            "model ebnn_cnn option channels: expected a list of ints in 1..65536 like channels=[16,32], got [16, 0]",
        ),
        ("ebnn_cnn", "kernel", "three", "model ebnn_cnn option kernel: expected an int like kernel=3, got 'three'"),
        ("ebnn_cnn", "kernel", 3.0, "model ebnn_cnn option kernel: expected an int like kernel=3, got 3.0"),
        ("binarynet_mlp", "depth", True, "model binarynet_mlp option depth: expected an int like depth=3, got True"),
        (
            "small_cnn",
            "width",
            1 << 40,
            "model small_cnn option width: expected an int in 1..65536 like width=32, got 1099511627776",
        ),
        (
            "resnet20",
            "width_mult",
            float("inf"),
            "model resnet20 option width_mult: expected a number in (0, 64] like width_mult=1.0, got inf",
        ),
        (
            "resnet20",
            "width_mult",
            float("nan"),
            "model resnet20 option width_mult: expected a number in (0, 64] like width_mult=1.0, got nan",
        ),
        (
            "resnet20",
            "width_mult",
            "half",
            "model resnet20 option width_mult: expected a number like width_mult=1.0, got 'half'",
        ),
        ("resnet20", "depth", 3, "model 'resnet20' has no option(s) depth; its options: width_mult"),
    ],
)
def test_a_bad_option_is_one_line_with_a_valid_example(model, option, value, message):
    with pytest.raises(BnnkitError) as info:
        check_options(model, {option: value})
    assert str(info.value) == message
    with pytest.raises(BnnkitError):
        create_model(model, 10, (3, 32, 32), **{option: value})


def test_the_shell_safe_list_builds_the_same_model_as_json():
    assert check_options("ebnn_cnn", {"channels": "16,32"}) == {"channels": [16, 32]}
    assert check_options("ebnn_cnn", {"channels": " 8 , 16 ,32"}) == {"channels": [8, 16, 32]}
    assert check_options("resnet20", {"width_mult": 2}) == {"width_mult": 2.0}  # an int for a float
    models = []
    for text in ("channels=16,32", "channels=[16,32]"):
        torch.manual_seed(0)
        models.append(create_model("ebnn_cnn", 10, (1, 28, 28), "embedded", **dict([_model_option(text)])))
    a, b = (m.state_dict() for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("width=64", ("width", 64)),
        ("channels=[16,32]", ("channels", [16, 32])),
        ("width_mult=0.5", ("width_mult", 0.5)),
        ("channels=16,32", ("channels", "16,32")),
    ],
)
def test_the_command_line_reads_json_and_leaves_the_rest_to_the_model(text, parsed):
    assert _model_option(text) == parsed


@pytest.mark.parametrize("name", model_names())
def test_every_option_of_every_model_takes_its_default_and_refuses_text_with_an_example_that_works(name):
    for key, default in model_options(name).items():
        assert check_options(name, {key: default}) == {key: list(default) if isinstance(default, tuple) else default}
        if isinstance(default, str):
            continue
        with pytest.raises(BnnkitError) as info:
            check_options(name, {key: "x y"})
        example = re.search(rf" like {key}=(\S+), got 'x y'$", str(info.value)).group(1)
        assert check_options(name, {key: json.loads(example)})  # the example given is itself valid


def test_the_ranges_are_those_the_messages_state():
    assert RANGES[int] == (1, 1 << 16) and RANGES[float] == (0.0, 64.0)
    assert check_options("small_cnn", {"width": 1 << 16}) and check_options("resnet20", {"width_mult": 64})
    with pytest.raises(BnnkitError, match="in 1..65536"):
        check_options("small_cnn", {"width": (1 << 16) + 1})


def test_summary_takes_the_shell_safe_spelling(capsys):
    assert main(["summary", "--model", "ebnn_cnn", "--dataset", "digits", "--option", "channels=4,8", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert len(layers) > 2
    assert main(["summary", "--model", "ebnn_cnn", "--dataset", "digits", "--option", "kernel=three"]) == 2
    assert (
        capsys.readouterr().err == "error: model ebnn_cnn option kernel: expected an int like kernel=3, got 'three'\n"
    )
