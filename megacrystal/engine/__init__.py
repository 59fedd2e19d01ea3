"""The training engine: a model on its parallel layout with its optimizer; one optimizer step per call.

engine.py   `Engine`: build the chunks of this rank, `train_step`, `eval_loss`, state in and out
smoke.py    a few steps on any layout from the command line (`python -m megacrystal.engine.smoke`)
"""
