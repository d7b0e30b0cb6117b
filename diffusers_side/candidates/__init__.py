"""Blind candidates: what an attacker holds after extraction, a ranked list of likely training images found without the training set."""
