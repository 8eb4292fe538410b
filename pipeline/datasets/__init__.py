"""Which videos a dataset has: official-layout adapters, downloads, and the generated datasets."""
