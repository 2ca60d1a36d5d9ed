"""napari-nstseg: find and outline small, low-contrast tumors in CT with CDI-NSTSEG."""

__version__ = "0.1.0"
