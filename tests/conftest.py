"""Settings for the whole test run. pytest-xdist runs the test files in one worker per core (pyproject's addopts):
each worker, and every process it starts, computes on one thread, so that the workers fill the cores without
spinning against each other."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
