"""The CLI contract end to end, and its one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def bnnflow(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bnnflow.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    proc = bnnflow("-q", "train", "--epochs", "3", "-o", run)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"test_accuracy", "epochs", "seconds"} and metrics["epochs"] == 3
    out = run / "build"
    proc = bnnflow("-q", "compile", run / "model.onnx", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return run, out


def test_compile_outputs(build):
    _, out = build
    for name in ("network.json", "weights.npz", "folding.json", "core.v", "top.v",
                 "manifest.json", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    folding = json.loads((out / "folding.json").read_text())
    assert report["cycles_per_frame"] == max(layer["cycles"] for layer in report["layers"])
    for layer in report["layers"]:  # the default folds every layer both ways
        f = folding[layer["name"]]
        assert 1 < layer["cycles"] < layer["weight_bits"]
        assert f["simd"] < layer["in_features"]


def test_verify_matches_torch_and_qonnx(build):
    run, out = build
    proc = bnnflow("verify", run, out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "verify.json").read_text())
    assert report["frames"] == 450
    assert report["mismatches_torch"] == 0 and report["mismatches_qonnx"] == 0


def test_missing_onnx(tmp_path):
    assert_clean_error(bnnflow("compile", tmp_path / "none.onnx", "-o", tmp_path / "b"),
                       "none.onnx", "no such file")


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x00\xffnot protobuf" * 20)
    assert_clean_error(bnnflow("compile", bad, "-o", tmp_path / "b"), "corrupt.onnx")


def test_unsupported_op(tmp_path):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], name="soft")], "g", [x], [y]))
    save(model, str(tmp_path / "softmax.onnx"))
    assert_clean_error(bnnflow("compile", tmp_path / "softmax.onnx", "-o", tmp_path / "b"),
                       "softmax.onnx", "'soft'", "Softmax")


def test_folding_that_does_not_divide(build, tmp_path):
    run, _ = build
    fold = tmp_path / "fold.json"
    fold.write_text(json.dumps({"fc0": {"pe": 8, "simd": 32}, "fc1": {"pe": 7, "simd": 32},
                                "fc2": {"pe": 8, "simd": 32}, "fc3": {"pe": 5, "simd": 8}}))
    assert_clean_error(bnnflow("compile", run / "model.onnx", "-o", tmp_path / "b",
                               "--folding", fold), "fold.json", "fc1", "PE 7")


def test_compile_for_a_board(build, tmp_path):
    run, _ = build
    out = tmp_path / "b"
    proc = bnnflow("compile", run / "model.onnx", "-o", out, "--board", "ulx3s-12f")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["estimate"]["lut4"] <= report["budget"]["lut4"]
    assert "ulx3s-12f" in report["budget"]["source"] and "LUT4" in proc.stdout


def test_compile_that_does_not_fit(build, tmp_path):
    run, _ = build
    out = tmp_path / "b"
    assert_clean_error(bnnflow("compile", run / "model.onnx", "-o", out, "--board",
                               "ulx3s-12f", "--lut-budget", "100"),
                       "--lut-budget 100", "LUT4", "layer fc")
    assert not (out / "core.v").exists()
    assert_clean_error(bnnflow("compile", run / "model.onnx", "-o", out, "--target-cycles", "8",
                               "--target-fps", "1000"), "--target-cycles and --target-fps")


def test_input_of_wrong_shape(build, tmp_path):
    _, out = build
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.uint8))
    assert_clean_error(bnnflow("simulate", out, "--inputs", tmp_path / "x.npy"),
                       "x.npy", "(3, 28, 28)", "(N, 64)")
    assert_clean_error(bnnflow("infer", "--device", f"sim:{out}", "--inputs",
                               tmp_path / "x.npy"), "x.npy")


def test_pixels_out_of_range(build, tmp_path):
    _, out = build
    np.save(tmp_path / "x.npy", np.full((2, 64), 200, np.uint8))
    assert_clean_error(bnnflow("simulate", out, "--inputs", tmp_path / "x.npy"),
                       "x.npy", "0..16")


def test_not_a_build_folder(tmp_path):
    assert_clean_error(bnnflow("simulate", tmp_path), "network.json")


@pytest.mark.sim
def test_simulate_whole_test_set(build):
    """cocotb + Verilator on all 450 digits, free-running and under random stalls."""
    _, out = build
    proc = bnnflow("simulate", out, "--dataset", "digits")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["frames"] == 450 and results["mismatches"] == 0
    assert results["accuracy"] == pytest.approx(results["reference_accuracy"])
    assert results["cycles_per_frame"] == pytest.approx(results["predicted_cycles_per_frame"],
                                                        rel=0.02)
    assert len(results["predictions"]) == 450


@pytest.mark.sim
def test_simulate_user_inputs_in_every_encoding(build, tmp_path):
    _, out = build
    from bnnflow import datasets
    from bnnflow.ir import Network
    from bnnflow.reference import run

    ds = datasets.load("digits")
    x = ds.x_test[:40]
    expected = run(Network.load(out), x).classes
    np.save(tmp_path / "labels.npy", ds.y_test[:40])
    encodings = {"pixels": x, "float": x.astype(np.float32) / 16,
                 "bits": (x >= 8), "bipolar": np.where(x >= 8, 1, -1).astype(np.int8)}
    for name, arr in encodings.items():
        np.save(tmp_path / f"{name}.npy", arr)
        proc = bnnflow("-q", "simulate", out, "--inputs", tmp_path / f"{name}.npy",
                       "--labels", tmp_path / "labels.npy", "--p-idle", "0.5")
        assert proc.returncode == 0, proc.stderr
        results = json.loads((out / "results.json").read_text())
        assert results["mismatches"] == 0
        assert results["predictions"] == expected.tolist(), name


@pytest.mark.sim
def test_infer_through_the_simulated_board(build, tmp_path):
    """24 digits through the driver, the UART and the host link of the simulated board top."""
    _, out = build
    from bnnflow import datasets
    from bnnflow.ir import Network
    from bnnflow.reference import run

    ds = datasets.load("digits")
    x = ds.x_test[:24]
    np.save(tmp_path / "x.npy", x)
    proc = bnnflow("infer", "--device", f"sim:{out}", "--inputs", tmp_path / "x.npy",
                   "-o", tmp_path / "preds.txt")
    assert proc.returncode == 0, proc.stderr
    preds = [int(v) for v in (tmp_path / "preds.txt").read_text().split()]
    assert preds == run(Network.load(out), x).classes.tolist()
    assert proc.stdout.split() == [str(p) for p in preds]


def test_bitstream_build_grows_with_the_network(build, tmp_path):
    """Two real yosys + nextpnr + ecppack builds: the TFC and a tiny net with the same host link."""
    from netutil import random_net

    from bnnflow.flow import CompileConfig, compile_model

    _, out = build
    tiny = tmp_path / "tiny"
    compile_model(CompileConfig(Path("unused.onnx"), tiny), net=random_net((64, 8, 4)))
    reports = {}
    for name, folder in (("tfc", out), ("tiny", tiny)):
        proc = bnnflow("build", folder, "--board", "ulx3s-85f")
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports[name] = json.loads((folder / "report.json").read_text())
        report = reports[name]
        for key in ("lut4", "ff", "ebr", "dsp", "fmax_mhz", "target_mhz"):
            assert isinstance(report[key], (int, float)), key
        path = report["critical_path"]
        assert path["delay_ns"] == pytest.approx(1e3 / report["fmax_mhz"], rel=0.05)
        assert path["from"] and path["to"] and path["logic_ns"] > 0
        assert report["fmax_mhz"] >= report["target_mhz"] == 25.0
        assert (folder / "ulx3s-85f.bit").stat().st_size > 100_000
    tfc, small = reports["tfc"], reports["tiny"]
    # The TFC's 3 x 64 x 64 + 640 weights must be there in logic or block RAM.
    assert tfc["lut4"] > small["lut4"] + 1500
    assert tfc["ff"] > small["ff"]


def test_build_passes_seeds(monkeypatch, tmp_path, capsys):
    """`bnnflow build --seeds N --seed S` reaches the build; the default is one placement with
    nextpnr's own seed."""
    import bnnflow.bitstream
    from bnnflow.cli import main

    calls = []

    def fake(build, board, **kwargs):
        calls.append(kwargs)
        return {"lut4": 1, "ff": 2, "ebr": 0, "dsp": 0, "fmax_mhz": 130.0, "target_mhz": 125.0,
                "bitstream": str(tmp_path / "x.bit")}

    monkeypatch.setattr(bnnflow.bitstream, "build_bitstream", fake)
    assert main(["build", str(tmp_path), "--target-mhz", "125", "--seeds", "3"]) in (0, None)
    assert main(["build", str(tmp_path)]) in (0, None)
    assert main(["build", str(tmp_path), "--seed", "7"]) in (0, None)
    assert [(c["seed"], c["seeds"]) for c in calls] == [(None, 3), (None, 1), (7, 1)]
    assert calls[0]["target_mhz"] == 125.0
    assert "fmax_mhz=130.0" in capsys.readouterr().out
