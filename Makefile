# Every target runs inside .venv, created on first use from the pinned requirements.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

PIPELINE_ROOT ?= runs
SERVING_DIR ?= serving_models
CONFIG ?= configs/amazon_fine_food.yaml

.PHONY: venv run test serve clean

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) pipeline.py run --config $(CONFIG) --pipeline-root $(PIPELINE_ROOT) \
	    --serving-dir $(SERVING_DIR)

test: venv
	$(PY) -m pytest -q tests

# Serves what `make run` pushed, with TF Serving's flags: gRPC on 8500, REST on 8501.
serve: venv
	$(PY) -m serving.server --model_name amazon_fine_food \
	    --model_base_path $(abspath $(SERVING_DIR)/amazon_fine_food) --port 8500 --rest_api_port 8501

clean:
	rm -rf $(PIPELINE_ROOT) $(SERVING_DIR)
