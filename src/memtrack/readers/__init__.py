"""One small module per kernel interface: recognize its paths, parse its text."""
