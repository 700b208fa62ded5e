# The two commands of the README: `make demo` and `make test`.
# Each installs what it needs first (scripts/bootstrap).
.PHONY: demo test bootstrap bench clean

# Lab guests run under TCG unless told otherwise: it works on every machine,
# including those whose /dev/kvm cannot boot a guest. Production uses kvm.
export LIVEMIG_DOMAIN_TYPE ?= qemu

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	.venv/bin/python -m livemig.demo

test: bootstrap
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

bench: bootstrap
	.venv/bin/python -m benchmarks.run_all

clean:
	-.venv/bin/livemig lab down 2>/dev/null
	rm -rf .venv build *.egg-info
