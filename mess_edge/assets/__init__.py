"""Shipped artifacts: the demo's stage-1 checkpoint and the script that makes it."""
