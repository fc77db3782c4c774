"""``bnnflow infer`` and ``bnnflow bench`` against the simulated board of a compiled build."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from netutil import random_conv_net, random_net

from bnnflow import reference

pytestmark = pytest.mark.sim


def bnnflow(*args):
    return subprocess.run([sys.executable, "-m", "bnnflow.cli", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A compiled random 64-32-16-10 network (digits-shaped) with its harness built."""
    from bnnflow.flow import CompileConfig, compile_model
    from bnnflow.sim.transport import build_harness

    out = tmp_path_factory.mktemp("build")
    net = random_net((64, 32, 16, 10), seed=11)
    compile_model(CompileConfig(Path("unused.onnx"), out), net=net)
    build_harness(out)
    return out, net


@pytest.fixture(scope="module")
def conv_build(tmp_path_factory):
    """A compiled integer-input conv network on 3-channel 8-bit pixels, three pixels per 24-bit
    core beat, with its harness built."""
    from bnnflow.flow import CompileConfig, compile_model
    from bnnflow.sim.transport import build_harness

    out = tmp_path_factory.mktemp("conv")
    levels = tuple(int(v) for v in np.rint((np.arange(256) - 127.5) / 2))
    net = random_conv_net((3, 8, 8), [("conv", 8, 3, 1, 0, 0), ("pool", 2, 2), ("dense", 10)],
                          seed=13, levels=levels)
    assert not net.input.binary
    compile_model(CompileConfig(Path("unused.onnx"), out, in_width=24), net=net)
    assert json.loads((out / "manifest.json").read_text())["in_width"] == 24
    build_harness(out)
    return out, net


def test_infer_sends_the_pixels_of_an_integer_input_net(conv_build, tmp_path):
    out, net = conv_build
    pixels = np.random.default_rng(2).integers(0, 256, (7, 3, 8, 8)).astype(np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    want = reference.run(net, pixels).classes
    assert len(set(want.tolist())) > 1  # the classes depend on the pixels
    proc = bnnflow("infer", "--device", f"sim:{out}", "--inputs", tmp_path / "x.npy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(c) for c in want]


def test_infer_refuses_another_build_in_one_line(build, tmp_path):
    out, net = build
    other = tmp_path / "other"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("simtransport"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["design_id"] = "00112233445566ff"
    (other / "manifest.json").write_text(json.dumps(manifest))
    pixels = np.random.default_rng(0).integers(0, 17, (5, 64)).astype(np.uint8)
    np.save(tmp_path / "x.npy", pixels)

    proc = bnnflow("infer", "--device", f"sim:{out}", "--build", other, "--inputs",
                   tmp_path / "x.npy")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith("bnnflow infer: error:")
    assert "00112233445566ff" in line and manifest["design_id"] != json.loads(
        (out / "manifest.json").read_text())["design_id"]

    proc = bnnflow("infer", "--device", f"sim:{out}", "--build", out, "--inputs",
                   tmp_path / "x.npy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(c) for c in reference.run(net, pixels).classes]


def test_bench_reports_fabric_and_link_apart(build, tmp_path):
    out, _ = build
    pixels = np.random.default_rng(1).integers(0, 17, (300, 64)).astype(np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    proc = bnnflow("bench", "--device", f"sim:{out}", "--inputs", tmp_path / "x.npy",
                   "--repeats", 10, "--link-images", 600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("fabric:") and "frames/s" in lines[0]
    assert lines[1].startswith("check:  OK") and "(reference)" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["link:"] * 3
    assert "of the byte limit" in lines[-1]


def test_bench_on_serial_needs_a_build():
    proc = bnnflow("bench", "--device", "serial:/dev/null")
    assert proc.returncode == 2 and "needs --build" in proc.stderr
