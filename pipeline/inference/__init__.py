"""`classify`: new videos through a checkpoint's recorded extraction, and the attention picture."""
