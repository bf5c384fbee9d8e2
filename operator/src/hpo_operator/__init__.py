"""Kopf operator that runs HpoStudy resources as MySQL-backed Optuna studies."""
