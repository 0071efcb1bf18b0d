# The two commands a newcomer runs (see README.md): `make demo` and `make test`.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup demo test test-slow test-calibrated

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/modelaudit demo

test: setup
	.venv/bin/python -m pytest -q

test-slow: setup
	.venv/bin/python -m pytest -q -m slow

test-calibrated: setup
	.venv/bin/python -m pytest -q -m calibrated
