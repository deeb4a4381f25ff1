# The two set-up commands of the README. Each installs what it needs on a fresh Debian machine.
# Both make and use their own virtual environment, .venv: Debian's and Ubuntu's python refuse
# `pip install` outside one (PEP 668), and a venv that is not activated hides its dnp-* commands,
# so every command here is called by its path in the venv.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
APT_PACKAGES = tshark tcpreplay iproute2 lua5.2 lua5.3 lua5.4

.PHONY: tshark venv demo test lint

# tshark (with dumpcap, mergecap, editcap, capinfos), tcprewrite, ip (the dnp-watch test's network
# namespace) and the Lua compilers that check the plugin parses under every Lua Wireshark builds with,
# from the OS packages, when missing; and python3-venv when $(PYTHON) cannot make a venv with pip
# (Debian ships venv's ensurepip in that package, apart from the python).
tshark:
	@command -v tshark >/dev/null && command -v tcprewrite >/dev/null && command -v luac5.4 >/dev/null \
	  && command -v ip >/dev/null && $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) \
	    $$($(PYTHON) -c 'import ensurepip' 2>/dev/null || echo python3-venv) >/dev/null; }

# The venv sees the packages $(PYTHON) already has (a python that holds torch lends it rather than
# download it again); what it lacks, pip installs inside the venv. Made again when it has no pip
# (a venv attempt without ensurepip leaves one).
$(BIN)/pip: | tshark
	$(PYTHON) -m venv --clear --system-site-packages $(VENV)

venv: $(BIN)/pip

# Install the runtime and scan the example capture with the example fingerprint, on the shipped models.
demo: tshark venv
	$(BIN)/python -m pip install -q .
	$(BIN)/dnp-enroll examples/enroll-camera.pcap --mac $$(cat examples/camera.mac) --name camera -o examples/camera.fp --quiet
	$(BIN)/dnp-scan examples/demo.pcapng --fingerprint examples/camera.fp; test $$? -le 1

# Install everything (runtime, training, test tools) and run the whole test suite, in the venv.
test: tshark venv
	$(BIN)/python -m pip install -q '.[train,dev]'
	$(BIN)/python -m ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
