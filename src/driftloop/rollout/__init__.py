"""Rollouts: the stages a challenger goes through and the alias moves that apply their decisions."""
