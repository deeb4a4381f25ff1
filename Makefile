# The two set-up commands of the README. Each installs what it needs on a fresh Debian machine.
PYTHON ?= python3
APT_PACKAGES = tshark tcpreplay iproute2 lua5.2 lua5.3 lua5.4

.PHONY: tshark demo test lint

# tshark (with dumpcap, mergecap, editcap, capinfos), tcprewrite, ip (the dnp-watch test's network
# namespace) and the Lua compilers that check the plugin parses under every Lua Wireshark builds with,
# from the OS packages, when missing.
tshark:
	@command -v tshark >/dev/null && command -v tcprewrite >/dev/null && command -v luac5.4 >/dev/null && command -v ip >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; }

# Install the runtime and scan the example capture with the example fingerprint, on the shipped models.
demo: tshark
	$(PYTHON) -m pip install -q .
	dnp-enroll examples/enroll-camera.pcap --mac $$(cat examples/camera.mac) --name camera -o examples/camera.fp --quiet
	dnp-scan examples/demo.pcapng --fingerprint examples/camera.fp; test $$? -le 1

# Install everything (runtime, training, test tools) and run the whole test suite.
test: tshark
	$(PYTHON) -m pip install -q '.[train,dev]'
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
