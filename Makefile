# The two commands of the README.  Both set everything up first (idempotent) and run offline.
.PHONY: quickstart test test-all setup bench

export HF_HUB_OFFLINE := 1

setup:
	@bash scripts/setup.sh

quickstart: setup
	.venv/bin/visionsmith quickstart $(if $(OUT),--out $(OUT),)

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"
