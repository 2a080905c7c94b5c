"""Knowledge distillation: the loss, the teacher's input, teacher checks, and exact resume with a projector."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import visionsmith as vs
from visionsmith.config import load_config
from visionsmith.data.synthetic import make_image_folder
from visionsmith.methods.distill import TeacherInput, kd_loss

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "digits.yaml"
QUICK = ["train.epochs=1", "train.threads=1"]


def test_kd_loss_is_zero_for_the_same_logits_and_matches_the_formula():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    assert kd_loss(s, s, 4.0).abs() < 1e-6
    p = F.softmax(t / 4, -1)
    manual = (p * (p.log() - F.log_softmax(s / 4, -1))).sum(-1).mean() * 16
    assert torch.allclose(kd_loss(s, t, 4.0), manual, atol=1e-5)


def test_teacher_input_resizes_and_changes_channels_and_stays_pixels():
    pix = torch.rand(2, 1, 16, 16)
    out = TeacherInput(32, 3)(pix)
    want = F.interpolate(pix.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", antialias=True)
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, want, atol=1e-6)
    assert TeacherInput(16, 1)(pix) is pix  # same size and channels: the pixels as they are
    rgb = torch.rand(2, 3, 16, 16)
    assert torch.allclose(TeacherInput(16, 1)(rgb), rgb.mean(1, keepdim=True))


def test_student_and_teacher_each_normalise_the_pixels_with_their_own_statistics():
    from visionsmith.methods.distill import Distill
    from visionsmith.models import create_model
    from visionsmith.tasks import get_task
    cfg = load_config(DIGITS, ["model.name=resnet8"])
    student = create_model("resnet8", num_classes=10, in_chans=1).eval()  # CIFAR mean/std, averaged to gray
    teacher = create_model("simple_cnn", num_classes=10, in_chans=3).eval()  # (0.5, 0.5, 0.5)
    seen = {}
    for name, m in (("student", student), ("teacher", teacher)):
        m.pixel_norm.register_forward_hook(lambda mod, inp, out, name=name: seen.update({name: (inp[0], out)}))
    d = Distill(student, {"model": teacher, "size": 24, "in_chans": 3}, cfg.distill, get_task(cfg)).eval()
    x = torch.rand(4, 1, 16, 16)
    out = d({"image": x, "label": torch.arange(4)})
    assert torch.equal(seen["student"][0], x)  # the batch's pixels, normalised by the student itself
    assert torch.equal(seen["student"][1], (x - student.pixel_norm.mean) / student.pixel_norm.std)
    assert torch.equal(seen["teacher"][0], TeacherInput(24, 3)(x))  # pixels, resized, 3 channels
    assert torch.equal(seen["teacher"][1], (TeacherInput(24, 3)(x) - 0.5) / 0.5)
    torch.testing.assert_close(out["output"], student(x))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A digits teacher: the plain CNN, two epochs."""
    return vs.train(DIGITS, ["train.epochs=2", "train.threads=1"], out=tmp_path_factory.mktemp("t") / "teacher")


def test_a_teacher_with_other_classes_is_refused_before_training(tmp_path, teacher):
    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=6, size=16)
    over = QUICK + ["method=distill", f"distill.teacher={teacher}", "data.name=folder", f"data.root={root}",
                    "data.test_fraction=0.0"]
    with pytest.raises(ValueError, match=r"the teacher must know the same classes"):
        vs.train(DIGITS, over, out=tmp_path / "s")
    assert not (tmp_path / "s" / "checkpoints").exists()


def test_a_registered_imagenet_teacher_serves_feature_distillation_only(tmp_path):
    over = QUICK + ["method=distill", "distill.teacher=mobilenetv2", "train.max_steps=3", "model.name=resnet8"]
    with pytest.raises(ValueError, match="use distill.kind=feature"):
        vs.train(DIGITS, over, out=tmp_path / "a")
    run = vs.train(DIGITS, over + ["distill.kind=feature"], out=tmp_path / "b", report=False)
    rows = (run / "metrics.jsonl").read_text()
    assert '"loss_feat"' in rows and '"loss_ce"' in rows


def test_distillation_resumes_bit_exact_with_its_projector(teacher, resumes_exactly):
    cfg = load_config(DIGITS, ["train.epochs=2", "train.checkpoint_every=7", "train.threads=1", "method=distill",
                               f"distill.teacher={teacher}", "distill.kind=both", "model.name=resnet8",
                               "model.in_chans=3"])
    *_, state = resumes_exactly(cfg)
    assert set(state["method"]) == {"projector.weight", "projector.bias"}


def test_the_report_puts_teacher_and_student_side_by_side(tmp_path, teacher):
    import json
    run = vs.train(DIGITS, QUICK + ["method=distill", f"distill.teacher={teacher}", "model.name=resnet8",
                                    "train.max_steps=5"], out=tmp_path / "s")
    html = (run / "report.html").read_text()
    t_acc = json.loads((teacher / "eval.json").read_text())["acc"]
    assert 'id="distillation"' in html and f"{100 * t_acc:.2f}%" in html and "resnet8" in html
