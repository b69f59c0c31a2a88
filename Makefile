# qpy: `make demo` shows it working, `make test` installs what the tests need and runs them.
# The venv is built from the system Python so that other Unix users (the multi-user tests,
# the nodes) can run it too.
PYTHON ?= /usr/bin/python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := $(CURDIR)/.demo

.PHONY: all venv system-deps workflows test demo bench install uninstall clean

all: venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]' \
	  --config-settings editable_mode=compat  # a path in a .pth: no import hook at each start
	$(PY) -m compileall -q qpy.py qpy_admin.py  # byte-code once: qpy starts faster
	touch $@

# The cluster tests need sshd and iproute2, the Slurm pool tests Slurm and munge, the
# completion test zsh; as root,
# install them (elsewhere those tests skip).
SYSTEM_PACKAGES := openssh-server openssh-client iproute2 util-linux procps chromium \
	slurm-wlm munge zsh
system-deps:
	@if [ "$$(id -u)" = 0 ] && ! [ -x /usr/sbin/sshd -a -x /usr/bin/ssh -a -x /usr/sbin/ip -a \
	  -x /usr/bin/chromium -a -x /usr/sbin/slurmctld -a -x /usr/sbin/munged -a \
	  -x /usr/bin/zsh ]; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
	  apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); fi

test: venv system-deps workflows
	$(PY) -m pytest -q tests

# The workflow tools of contrib/ (Snakemake, dask-jobqueue) for their tests, in a venv of
# their own (they bring many packages).
WORKFLOWS := .venv-workflows
workflows: $(WORKFLOWS)/.installed
$(WORKFLOWS)/.installed:
	$(PYTHON) -m venv $(WORKFLOWS)
	$(WORKFLOWS)/bin/pip install --quiet --disable-pip-version-check 'snakemake>=8' \
	  snakemake-executor-plugin-cluster-generic 'dask-jobqueue>=0.8'
	touch $@

# A personal queue in .demo/ (not your ~/.qpy): submit, watch, wait, read the output and the
# history. Each command is shown as a user types it, then run.
demo: venv
	@rm -rf $(DEMO) && mkdir -p $(DEMO)/work
	@cd $(DEMO)/work && export QPY_STATE=$(DEMO)/state PATH=$(CURDIR)/$(VENV)/bin:$$PATH && \
	  run() { printf '\n$$ %s\n' "$$1"; sh -c "$$1"; } && \
	  run "qpy sub hostname" && \
	  run "qpy sub -N nap 'sleep 1; echo slept one second'" && \
	  run "qpy sub -N oops 'echo trying; exit 3'" && \
	  run "qpy sub -N after --afterok 2 'echo after the nap'" && \
	  run "qpy check -l" && \
	  { run "qpy wait" || echo "(exit status $$?: not every job ended done)"; } && \
	  run "qpy check -l" && \
	  run "cat job_1.out job_2.out job_4.out" && \
	  run "qpy clean all" && \
	  run "qpy history" && \
	  run "qpy status"

clean:
	rm -rf $(VENV) $(DEMO) $(WORKFLOWS)

# Performance figures beside baselines measured in the same run (task-spooler from apt as root).
bench: venv
	@if [ "$$(id -u)" = 0 ] && ! command -v tsp >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends task-spooler; fi
	$(PY) bench/bench.py

# A shared install for a lab: a venv from the system Python (readable by every user and node),
# the qpy and qpy-admin commands in $(PREFIX)/bin, the completion and docs in
# $(PREFIX)/share/qpy. With SITE=<dir>, every user of this install finds that site.
PREFIX ?= /opt/qpy
install:
	$(PYTHON) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install --quiet --disable-pip-version-check .
	mkdir -p $(PREFIX)/bin $(PREFIX)/share/qpy
	ln -sf ../venv/bin/qpy $(PREFIX)/bin/qpy
	ln -sf ../venv/bin/qpy-admin $(PREFIX)/bin/qpy-admin
	ln -sf ../venv/bin/qpy-kill $(PREFIX)/bin/qpy-kill
	cp bash_completion.sh README.md $(PREFIX)/share/qpy/
	if [ -n "$(SITE)" ]; then $(PREFIX)/venv/bin/python -I -c \
	  'import qpy, os, sys; open(os.path.join(qpy.HERE, "qpy.site"), "w").write(sys.argv[1] + "\n")' \
	  "$(SITE)"; fi
	chmod -R a+rX $(PREFIX)
	@echo "Installed in $(PREFIX): users add $(PREFIX)/bin to PATH and source $(PREFIX)/share/qpy/bash_completion.sh"

uninstall:
	rm -rf $(PREFIX)/venv $(PREFIX)/bin/qpy $(PREFIX)/bin/qpy-admin $(PREFIX)/bin/qpy-kill \
	  $(PREFIX)/share/qpy
	-rmdir $(PREFIX)/bin $(PREFIX)/share $(PREFIX) 2>/dev/null
