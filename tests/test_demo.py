"""The demo end to end (on the MNIST subset, one epoch): train, export, numpy and C agree."""

import pytest
from helpers.datafiles import make_idx_dir

import bnnkit.apps.demo as demo


@pytest.mark.slow
def test_demo_end_to_end_and_rerun(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "pick_dataset", lambda data_dir: "mnist5k")
    first = demo.run_demo(tmp_path / "demo", epochs=1, progress=False)
    assert first["dataset"] == "mnist5k" and first["n"] == 1000
    assert first["graph_agreement"] == 1.0 and first["numpy_bit_exact"] and first["c_bit_exact"]
    assert first["checked_n"] == 1000 and set(first["sign_agreement"].values()) == {1.0}
    assert first["accuracy"] == first["graph_accuracy"] > 0.5
    assert (tmp_path / "demo" / demo.GRAPH).is_file()
    m4 = first["cortex_m4"]
    if "skipped" not in m4:  # the cross toolchain and QEMU are optional for the demo
        assert m4["n"] == 1000 and m4["bit_exact"] and m4["accuracy"] == first["graph_accuracy"]
        assert 0 < m4["ram_bytes"] < 64 * 1024 and m4["flash_bytes"] > 0
    again = demo.run_demo(tmp_path / "demo", epochs=1, progress=False)  # a finished run is reported, not retrained
    assert again["accuracy"] == first["accuracy"] and again["train_seconds"] < first["train_seconds"]


def test_the_demo_takes_fashion_mnist_where_its_files_are_and_the_mnist_subset_elsewhere(tmp_path):
    assert demo.pick_dataset(str(tmp_path)) == "mnist5k"  # an empty directory
    make_idx_dir(tmp_path)
    assert demo.pick_dataset(str(tmp_path)) == "fashion_mnist"
