"""Ensembling, post-processing and the choice of the best method/configuration."""
