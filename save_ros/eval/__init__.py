"""Evaluation: campaign metrics, the `Method` protocol, campaigns, PVF and the demo.

`save_ros.eval.methods` defines how a model runs under faults (unprotected, ECC oracle; SAVE and
the other baselines register there); `campaign.run_campaign` drives seeded trials over methods.
"""
