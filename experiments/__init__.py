"""experiments: the guide as runnable experiments, and the `backprop-lab` command line."""
