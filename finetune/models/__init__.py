"""Backbone factory (timm + torchvision), weights resolution, heads, layer units and groups."""
