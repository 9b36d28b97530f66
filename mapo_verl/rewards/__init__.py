"""Rewards for audio multiple-choice RL: answer extraction, the consistency judge, the veRL reward function.

``pkg://mapo_verl.rewards.mcqa`` / ``compute_score`` is the custom reward function of the
recipes; :mod:`mapo_verl.rewards.answer` is shared with ``scripts/evaluate.py``.
"""
