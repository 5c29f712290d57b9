"""Phantom BIDS datasets, demo-model training and nnU-Net model-folder writing."""
