"""Likelihood surrogates (ELBO, EUBO, importance-weighted bounds) and exact likelihoods."""
