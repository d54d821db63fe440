# The two commands of the README. Both set everything up first (scripts/bootstrap.sh).
# VENV: the virtual environment to use (default .venv; one per host when you test several).
.PHONY: test demo
VENV ?= .venv
export VENV

# Run the test suite against a real ComfyUI host (CI=true turns a missing host into a failure).
test:
	bash scripts/bootstrap.sh test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Start a headless ComfyUI with this pack and run workflows/text_to_panorama.json through its HTTP API.
demo:
	bash scripts/bootstrap.sh demo
	$(VENV)/bin/python scripts/demo.py $(DEMO_ARGS)
