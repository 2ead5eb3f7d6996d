"""Reading a run's TensorBoard event file back with TensorBoard's own reader (shared by the experiment tests)."""

from __future__ import annotations

import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EVERYTHING = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}  # keep every event


class Events:
    """A run's event file with tags as the experiment writes them ("loss/train"): on disk each tag
    starts with the experiment's name (TensorBoard groups charts by it; checked here on every read)."""

    def __init__(self, path):
        self.ea = EventAccumulator(path, size_guidance=EVERYTHING)
        self.ea.Reload()
        self.prefix = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path)))) + "/"

    def Tags(self):
        out = {}
        for kind, tags in self.ea.Tags().items():
            if isinstance(tags, list) and kind in ("scalars", "images", "histograms", "tensors"):
                assert all(t.startswith(self.prefix) for t in tags if kind != "tensors"), (self.prefix, tags)
                tags = [t[len(self.prefix):] if t.startswith(self.prefix) else t for t in tags]
            out[kind] = tags
        return out

    def __getattr__(self, name):  # Scalars, Images, Histograms, Tensors: by the unprefixed tag
        method = getattr(self.ea, name)
        return lambda tag, *a: method(self.prefix + tag, *a)
