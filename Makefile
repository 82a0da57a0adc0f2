# make test   run the test suite (installs pinned pytest, hypothesis and pyte into .venv if needed,
#             and the reference MCP servers the MCP tests talk to, if the registries answer)
# make check  byte-compile, and prove with vermin that chat.py runs on Python 3.6+
# make e2e    the end-to-end tests against llama.cpp's server with a real model
# make bench  measure chat.py against a minimal floor (not part of make test)
# make mutate mutation-test the pure core and what hardens it (.ci/mutate.py; hours
#             in all: python3 .ci/mutate.py --targets NAME,... runs a part)
# make run    start a chat
# make install  chat.py as a command in $(PREFIX)/bin (default ~/.local), its
#             bytecode compiled once so it starts fast
PYTHON ?= python3
PREFIX ?= $(HOME)/.local
VENV   := .venv
PYTEST := pytest==8.3.5 hypothesis==6.113.0 pyte==0.8.2 wcwidth==0.2.13
VERMIN := vermin==1.9.2
# The real MCP servers of the tests, kept out of the tree (like make e2e's llama.cpp).
MCP_HOME ?= $(HOME)/.cache/chat.py/mcp
MCP_TIME := mcp-server-time==2026.10.19
MCP_EVERYTHING := @modelcontextprotocol/server-everything@2026.8.31

.PHONY: test e2e check bench mutate run install mcp-servers clean
PYTEST_ARGS ?=

test:
	@$(MAKE) --no-print-directory mcp-servers || echo "make test: the MCP servers could not be installed; their tests will skip"
	@if $(PYTHON) -c 'import pytest, hypothesis, pyte' 2>/dev/null; then py='$(PYTHON)'; \
	else $(MAKE) --no-print-directory $(VENV)/.pytest && py='$(VENV)/bin/python'; fi; \
	CHAT_PY_MCP_HOME='$(MCP_HOME)' $$py -m pytest -q -rs -o 'markers=e2e: against a real server (make e2e)' $(PYTEST_ARGS) test_chat.py

# mcp-server-time needs Python 3.10+: $(PYTHON) if it is that new, else a python3.1x that runs.
mcp-servers: $(MCP_HOME)/.installed

$(MCP_HOME)/.installed: Makefile
	mkdir -p $(MCP_HOME)
	for py in $(PYTHON) python3.13 python3.12 python3.11 python3.10; do \
	    $$py -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null && break; done; \
	$$py -m venv $(MCP_HOME)/venv && $(MCP_HOME)/venv/bin/python -m pip install -q '$(MCP_TIME)'
	cd $(MCP_HOME) && npm install --silent --no-audit --no-fund '$(MCP_EVERYTHING)'
	touch $@

e2e:
	bash .ci/e2e

check: $(VENV)/.vermin
	$(PYTHON) -m py_compile chat.py test_chat.py
	$(VENV)/bin/vermin -t=3.6- --no-tips --violations chat.py

bench:
	$(PYTHON) bench.py

mutate: $(VENV)/.pytest
	$(VENV)/bin/python .ci/mutate.py

run:
	$(PYTHON) chat.py

# The command is a two-line launcher that imports chat.py from lib/: Python
# caches an imported module's bytecode, never a script's.
install:
	install -d $(PREFIX)/bin $(PREFIX)/lib/chat.py
	install -m 644 chat.py $(PREFIX)/lib/chat.py/chat.py
	$(PYTHON) -m compileall -q $(PREFIX)/lib/chat.py
	printf '#!%s\nimport sys; sys.path.insert(0, "%s")\nimport chat; sys.exit(chat.main())\n' \
	    "$$($(PYTHON) -c 'import sys; print(sys.executable)')" "$(PREFIX)/lib/chat.py" \
	    > $(PREFIX)/bin/chat.py
	chmod 755 $(PREFIX)/bin/chat.py
	@echo "installed $(PREFIX)/bin/chat.py"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.pytest: $(VENV)/bin/python Makefile
	$(VENV)/bin/python -m pip install -q $(PYTEST)
	touch $@

$(VENV)/.vermin: $(VENV)/bin/python Makefile
	$(VENV)/bin/python -m pip install -q '$(VERMIN)'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis __pycache__
