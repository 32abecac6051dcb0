"""Double-drift diagnostics, plots and reports."""
