"""Diagnostics: double drift (gap, gradient cosine), health signals and the collapse alarm, adaptive beta,
plots (reports of run directories: ``dipod.runs.report``)."""
