"""The multi-exit network: backbones, exit heads, the confidence gate, MAC counts, presets."""
