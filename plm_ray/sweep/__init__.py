"""The fine-tuning sweep: the stage on the driver (stage.py), the Tune search (search.py), one trial
(trial.py) and the results (results.py)."""
