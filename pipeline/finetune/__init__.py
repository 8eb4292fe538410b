"""`cli.py finetune`: train a profile's RGB or flow backbone on a dataset's videos, TSN style."""
