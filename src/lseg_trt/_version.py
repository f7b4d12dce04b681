"""The package version, in a leaf module: modules record it in artefacts without importing the package root
(which re-exports the public API and so imports nearly everything)."""

__version__ = "0.1.0"
