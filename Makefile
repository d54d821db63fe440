# The two commands of the README. Both set everything up first (scripts/bootstrap.sh).
.PHONY: test demo

# Run the test suite against a real ComfyUI host (CI=true turns a missing host into a failure).
test:
	bash scripts/bootstrap.sh test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# Start a headless ComfyUI with this pack and run workflows/text_to_panorama.json through its HTTP API.
demo:
	bash scripts/bootstrap.sh demo
	.venv/bin/python scripts/demo.py $(DEMO_ARGS)
