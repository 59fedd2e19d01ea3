"""The model: Crystal/LLaMA transformer, its layer factory and parameter specs, muP init, padding, files."""
