"""Evaluation: the official metric protocols (`metrics`) on the toy world (`toyworld`) and on the paper's
benchmarks read from their standard layouts (`benchmarks`)."""
