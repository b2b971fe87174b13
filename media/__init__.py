"""Synchronous audio processing: codecs, resampling, noise suppression, playout and pacing.

Nothing in this package performs I/O or reads a clock; time is passed in by the caller.
"""
