import json

import pytest

from bnnkit.errors import BnnkitError
from bnnkit.recipe import BASELINE, Recipe, load_recipe


def test_baseline_is_the_default_recipe():
    assert load_recipe(None) is BASELINE
    assert load_recipe("baseline") == Recipe()
    assert BASELINE.input_quantizer == "clipped_ste_sign" and BASELINE.fp_first_layer


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_file_round_trip(tmp_path, suffix):
    recipe = BASELINE.with_(name="mine", lr=0.003, fp_last_layer=False, pad_value=-1.0, warmup_epochs=2)
    path = tmp_path / f"r{suffix}"
    recipe.save(path)
    assert load_recipe(path) == recipe
    assert load_recipe(str(path)) == recipe


def test_toml_integers_become_floats_and_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text("lr = 1\npad_value = -1\n")
    recipe = load_recipe(path)
    assert recipe.name == "quick" and recipe.lr == 1.0 and isinstance(recipe.lr, float) and recipe.pad_value == -1.0


def test_with_changes_only_named_fields():
    changed = BASELINE.with_(weight_scale="mean_abs")
    assert changed.weight_scale == "mean_abs"
    assert {k: v for k, v in changed.to_dict().items() if k != "weight_scale"} == {
        k: v for k, v in BASELINE.to_dict().items() if k != "weight_scale"
    }
    with pytest.raises(BnnkitError, match="unknown recipe field.*colour"):
        BASELINE.with_(colour="red")


@pytest.mark.parametrize(
    "content, message",
    [
        ('optimiser = "adam"\n', "unknown recipe key.*optimiser"),
        ('lr = "fast"\n', "lr must be a float"),
        ('optimizer = "lamb"\n', "optimizer = 'lamb' is not one of"),
        ("pad_value = 0.5\n", "pad_value"),
        ("batch_size = 0\n", r"batch_size must be an integer in 1\.\.1048576, got 0"),
        ("batch_size = 1099511627776\n", r"batch_size must be an integer in 1\.\.1048576"),
        ("batch_size = 64.0\n", "batch_size must be an int, got 64.0"),
        ("batch_size = true\n", "batch_size must be an int, got True"),
        ("fp_first_layer = 1\n", "fp_first_layer must be a bool"),
        ("lr = inf\n", r"lr must be a finite number in \(0, 10\], got inf"),
        ("lr = nan\n", r"lr must be a finite number in \(0, 10\], got nan"),
        ("lr = -inf\n", "lr must be a finite number"),
        ("lr = true\n", "lr must be a float, got True"),
        ("width_mult = inf\n", r"width_mult must be a finite number in \(0, 16\], got inf"),
        ("momentum = 1.0\n", r"momentum must be a finite number in \[0, 1\)"),
        ("weight_decay = -0.1\n", "weight_decay must be a finite number in"),
        ("latent_clip = inf\n", "latent_clip must be a finite number"),
        ("bop_gamma = 2\n", r"bop_gamma must be a finite number in \(0, 1\]"),
        ("warmup_epochs = -1\n", r"warmup_epochs must be an integer in 0\.\.10000"),
        ("activation_bits = 9\n", r"activation_bits must be an integer in 1\.\.8"),
        ("name = 3\n", "recipe name must be a str, got 3"),
        ("lr = [\n", "not a valid TOML recipe"),
    ],
)
def test_bad_recipe_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(BnnkitError, match=message) as info:
        load_recipe(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"width_mult": float("inf")}, "width_mult must be a finite number"),
        ({"lr": True}, "lr must be a float, got True"),
        ({"batch_size": 32.0}, "batch_size must be an int"),
        ({"distill": 1}, "distill must be a bool"),
        ({"input_quantizer": 3}, "input_quantizer must be a str"),
    ],
)
def test_recipes_built_in_python_are_checked_as_files_are(changes, message):
    with pytest.raises(BnnkitError, match=message):
        BASELINE.with_(**changes)
    with pytest.raises(BnnkitError, match=message):
        Recipe(**changes)


def test_an_int_given_for_a_float_field_becomes_that_float():
    recipe = BASELINE.with_(lr=1, width_mult=2)
    assert type(recipe.lr) is float and type(recipe.width_mult) is float
    assert recipe == BASELINE.with_(lr=1.0, width_mult=2.0) and json.loads(json.dumps(recipe.to_dict()))["lr"] == 1.0


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(BnnkitError, match="unknown recipe 'fancy'.*baseline"):
        load_recipe("fancy")
    with pytest.raises(BnnkitError, match="cannot read recipe file"):
        load_recipe(tmp_path / "absent.json")


def test_json_recipe_must_be_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(BnnkitError, match="table of fields"):
        load_recipe(path)


@pytest.mark.parametrize(
    "methods, message",
    [
        (["ste", "approx_sign"], "'ste' and 'approx_sign' are incompatible: both set input_quantizer"),
        (
            ["rsign", "abc_activation_bases"],
            "activation_bases and learnable_threshold each replace the activation binarizer",
        ),
        (["dorefa_2bit", "rsign"], "activation_bits and learnable_threshold each replace"),
        (["bop", "two_stage"], "two_stage need"),
        (["bop", "abc_weight_bases"], "weight_bases need"),
        (["bop", "weight_standardization"], "weight_norm need"),
        (["xnor_weight_scale", "learned_weight_scale"], "both set weight_scale"),
    ],
)
def test_incompatible_methods_are_one_clear_error(methods, message):
    from bnnkit.recipe import apply_methods

    with pytest.raises(BnnkitError, match=message):
        apply_methods(BASELINE, methods)


def test_methods_compose_by_name_and_in_a_recipe_string():
    from bnnkit.recipe import METHODS, apply_methods

    both = apply_methods(BASELINE, ["rsign", "double_residual"])
    assert both.learnable_threshold and both.residual == "double" and both.name == "rsign+double_residual"
    assert load_recipe("rsign+double_residual") == both
    assert load_recipe("embedded+bop").fp_first_layer is False and load_recipe("embedded+bop").optimizer == "bop"
    for name, method in METHODS.items():  # each alone changes exactly the fields it names
        changed = apply_methods(BASELINE, [name]).to_dict()
        assert {k for k, v in changed.items() if v != BASELINE.to_dict()[k]} - {"name"} == {
            k for k, v in method.changes.items() if getattr(BASELINE, k) != v
        }
    with pytest.raises(BnnkitError, match="unknown recipe 'rsign\\+nonsense'"):
        load_recipe("rsign+nonsense")


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_every_field_survives_a_file_round_trip(tmp_path, suffix):
    from bnnkit.recipe import apply_methods

    recipe = apply_methods(BASELINE, ["swish_sign", "learned_weight_scale", "abc_weight_bases", "dorefa_2bit",
                                      "sgd_step", "two_stage", "distillation", "double_residual", "fp_downsample",
                                      "rprelu", "pool_after_sign", "width_x2", "pad_plus_one", "binary_first_last",
                                      "weight_standardization", "xnor_activation_scale", "feature_norm"])  # fmt: skip
    changed = {k for k, v in recipe.to_dict().items() if v != BASELINE.to_dict()[k]}
    assert len(changed) >= 20
    recipe.save(tmp_path / f"r{suffix}")
    assert load_recipe(tmp_path / f"r{suffix}") == recipe
