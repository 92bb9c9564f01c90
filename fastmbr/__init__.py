"""fastmbr: model-based robust deep learning (Robey, Hassani & Pappas, 2020), built for speed."""

__version__ = "0.1.0"
