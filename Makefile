# qpy: `make demo` shows it working, `make test` installs what the tests need and runs them.
# The venv is built from the system Python so that other Unix users (the multi-user tests,
# the nodes) can run it too.
PYTHON ?= /usr/bin/python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := $(CURDIR)/.demo

.PHONY: all venv system-deps test demo bench clean

all: venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m compileall -q qpy.py qpy_admin.py  # byte-code once: qpy starts faster
	printf '#!%s\nimport sys\nsys.path.insert(0, "%s")\nimport qpy\nsys.exit(qpy.main())\n' \
	    "$(abspath $(PY))" "$(CURDIR)" > $(VENV)/bin/qpy
	printf '#!%s\nimport sys\nsys.path.insert(0, "%s")\nimport qpy_admin\nsys.exit(qpy_admin.main())\n' \
	    "$(abspath $(PY))" "$(CURDIR)" > $(VENV)/bin/qpy_admin
	chmod +x $(VENV)/bin/qpy $(VENV)/bin/qpy_admin
	touch $@

# The cluster tests need sshd and iproute2; as root, install them (elsewhere those tests skip).
SYSTEM_PACKAGES := openssh-server openssh-client iproute2 util-linux procps
system-deps:
	@if [ "$$(id -u)" = 0 ] && ! [ -x /usr/sbin/sshd -a -x /usr/bin/ssh -a -x /usr/sbin/ip ]; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
	  apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); fi

test: venv system-deps
	$(PY) -m pytest -q tests

# A personal queue in .demo/ (not your ~/.qpy): submit, watch, read the output.
demo: venv
	@rm -rf $(DEMO) && mkdir -p $(DEMO)/work
	@cd $(DEMO)/work && export QPY_STATE=$(DEMO)/state PATH=$(CURDIR)/$(VENV)/bin:$$PATH && \
	  set -x && qpy sub hostname && qpy sub -n 1 'sleep 1; echo slept one second' && \
	  qpy sub sh -c 'echo job $$QPY_JOB_ID on $$QPY_NODE with $$QPY_N_CORES core' && \
	  qpy check && \
	  while [ -n "$$(qpy check queue running)" ]; do sleep 0.2; done && \
	  qpy check && cat job_1.out job_2.out job_3.out && qpy status

clean:
	rm -rf $(VENV) $(DEMO)

# Performance figures beside baselines measured in the same run (task-spooler from apt as root).
bench: venv
	@if [ "$$(id -u)" = 0 ] && ! command -v tsp >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends task-spooler; fi
	$(PY) bench/bench.py
