"""Image-folder scanning and validation, decoding, albumentations presets, the datamodule."""
