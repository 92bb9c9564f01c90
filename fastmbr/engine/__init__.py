"""The engine wires data, models of variation, algorithms and classifiers into runs."""
