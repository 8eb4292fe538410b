"""The Attention Clusters network: pure torch, no I/O."""
