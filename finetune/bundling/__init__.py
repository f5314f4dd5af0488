"""Export bundles: safetensors + ONNX (+ TorchScript, + int8) + config.json, checked for parity.

The public function is `finetune.export` (`finetune.bundling.bundle.export`); this package has
another name so that importing it never shadows that function on the `finetune` package.
"""
