"""Backbone CNNs that turn frames, flow stacks and audio patches into local features, by name."""
