"""The digits example: model training (train.py), test images (images.py), plugin (plugin/)."""
