"""Training and evaluation of the attention-cluster network on a feature store."""
