"""Metadata, dependencies and package data (the weights manifest) live in setup.cfg."""
from setuptools import setup

setup()
