# The two commands a newcomer runs (see README.md): `make demo` and `make test`.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup demo test test-slow test-calibrated lock lock-upgrade test-latest

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

# The locks setup.sh installs (requirements/lock-*.txt): `lock` after a change to pyproject.toml or
# requirements/torch.txt keeps every pin it can; `lock-upgrade` moves all to the newest releases.
lock:
	./scripts/lock.sh

lock-upgrade:
	./scripts/lock.sh --upgrade

# The tests against the newest releases, without the lock, in .venv-latest (rebuilt each time). Run weekly
# by .github/workflows/latest.yml; a failure there is news of a breaking release, not a broken main.
test-latest:
	./scripts/setup.sh --latest
	.venv-latest/bin/python -m pytest -q
