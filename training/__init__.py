"""Fine-tune torchvision classifiers from YAML recipes. Entry point: `python -m training`."""
