"""Datasets made offline on the spot: the `toy` clips and the paper's Flash-MNIST."""
