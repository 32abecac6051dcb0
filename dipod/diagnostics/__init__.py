"""Diagnostics: double drift (gap, gradient cosine), health signals and the collapse alarm, adaptive beta,
plots and reports."""
