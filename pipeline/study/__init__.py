"""The paper's Flash-MNIST study: LeNet local features, the ablation grid, its report."""
