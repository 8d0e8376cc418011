"""Stage ``export`` (host, torch + onnx): a checkpoint -> one ONNX graph per segment and head + manifest.json."""
