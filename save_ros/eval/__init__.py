"""Evaluation: campaigns (the `Method` protocol, seeded trials, PVF, faults during training),
Selection's validation, and the measurements (`bench/`), with one timing helper (`timing`) and
one run record (`record`).
"""
