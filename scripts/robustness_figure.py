"""Draws docs/robustness-fashion-mnist.png (README): PGD-AT vs standard training under PGD-20 and FGSM.

    .venv/bin/python scripts/robustness_figure.py runs/pgd-at runs/fm-standard
"""
import base64, json, sys
from visionsmith.report.robustness import robustness_plot
adv, std = sys.argv[1], sys.argv[2]
curves = {}
for who, run in (("PGD-AT", adv), ("standard", std)):
    c = json.load(open(f"{run}/robustness.json"))
    curves[f"{who}-pgd"] = {**c["pgd-linf-20"], "label": f"{who}: PGD-20"}
    curves[f"{who}-fgsm"] = {**c["fgsm-linf"], "label": f"{who}: FGSM"}
png = robustness_plot(curves, "ResNet-8 on Fashion-MNIST under L-inf attacks")
open("docs/robustness-fashion-mnist.png", "wb").write(base64.b64decode(png))
