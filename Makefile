# The two commands of the README: `make train` and `make test`. Both set up .venv first.
VENV ?= .venv
ARGS ?=

.PHONY: setup train test
setup:
	@bash scripts/bootstrap.sh

train: setup
	$(VENV)/bin/adactrl train $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest tests $(ARGS)
