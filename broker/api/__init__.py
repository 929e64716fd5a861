"""Thin JSON and OAuth routes: parse, call one service function, return a model."""
