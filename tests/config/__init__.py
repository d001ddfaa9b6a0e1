"""Tests of configuration loading and the bundled default content."""
