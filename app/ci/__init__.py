"""Tangled's CI API on this spindle's runs: the `sh.tangled.ci.*` methods (lexicons/sh.tangled.ci.*)."""
