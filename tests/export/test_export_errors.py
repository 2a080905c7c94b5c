"""Bad input to export and ONNX predict: one clear error each, and nothing left that looks done."""
from __future__ import annotations

import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from visionsmith import api
from visionsmith.data import DataError
from visionsmith.engine.checkpoint import CheckpointError
from visionsmith.export import ExportError, OnnxClassifier, ParityError, export_onnx, opset_range


def test_run_folder_without_weights(digits_run, tmp_path):
    half = tmp_path / "half-written"
    half.mkdir()
    for name in ("config.yaml", "run.json"):  # a run killed before its first checkpoint
        shutil.copy(digits_run / name, half / name)
    with pytest.raises(CheckpointError, match="has no weights yet"):
        export_onnx(half)
    assert not (half / "export" / "model.onnx").exists()
    with pytest.raises(CheckpointError, match="not a run folder"):
        export_onnx(tmp_path / "nowhere")


@pytest.mark.parametrize("opset", [7, 17, 99])
def test_opset_this_install_cannot_write(digits_run, opset):
    lo, hi = opset_range()
    assert lo == 18 and hi >= 20 and hi <= onnx.defs.onnx_opset_version()
    with pytest.raises(ExportError, match=rf"--opset {opset} cannot be written here: .* writes opsets {lo} to {hi}"):
        export_onnx(digits_run, opset=opset, out=digits_run / "export" / f"op{opset}.onnx")
    assert not (digits_run / "export" / f"op{opset}.onnx").exists()


def test_calibration_set_with_no_images(digits_run, tmp_path):
    empty = tmp_path / "calib"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    (empty / "sub" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(DataError, match="calibration folder .* has no readable images"):
        export_onnx(digits_run, int8="static", calib_data=empty, out=out, check=50)
    with pytest.raises(FileNotFoundError, match="calibration folder .* does not exist"):
        export_onnx(digits_run, int8="static", calib_data=tmp_path / "missing", out=out, check=50)
    with pytest.raises(ValueError, match="--calib must be >= 1"):
        export_onnx(digits_run, int8="static", calib=0, out=out)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp.onnx"))


def test_bad_arguments(digits_run, tmp_path):
    with pytest.raises(ValueError, match="--int8 must be one of static, dynamic"):
        export_onnx(digits_run, int8="int4", out=tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="--check must be >= 1"):
        export_onnx(digits_run, check=0, out=tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="format 'tflite' is not supported"):
        api.export(digits_run, format="tflite")


def test_parity_failure_is_an_error_and_writes_nothing(digits_run, tmp_path):
    out = tmp_path / "strict.onnx"
    # fp32 ONNX differs from PyTorch by ~1e-6 (float reordering): a zero tolerance must refuse it.
    with pytest.raises(ParityError, match="fp32 ONNX does not match PyTorch .* nothing was written"):
        export_onnx(digits_run, out=out, check=50, atol=0.0)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_onnx_predict_rejects_missing_and_foreign_files(digits_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        api.predict(tmp_path / "missing.onnx", [tmp_path])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not protobuf")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        OnnxClassifier(garbage)
    # A valid ONNX model that visionsmith did not write: no metadata, so no classes or preprocessing.
    g = helper.make_graph([helper.make_node("Relu", ["pixels"], ["logits"])], "g",
                          [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save_model(helper.make_model(g), str(foreign))
    with pytest.raises(ValueError, match="not a visionsmith export"):
        api.predict(foreign, [tmp_path])


def test_cli_bad_input_is_one_line(digits_run, cli, tmp_path):
    res = cli("export", digits_run, "--opset", "99", check=False)
    assert res.returncode == 2 and res.stderr.startswith("error: --opset 99 cannot be written here")
    assert "Traceback" not in res.stderr
    res = cli("predict", tmp_path / "missing.onnx", tmp_path, check=False)
    assert res.returncode == 2 and "no such ONNX file" in res.stderr and "Traceback" not in res.stderr
