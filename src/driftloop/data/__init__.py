"""Labelled text data: reading any data set by configuration, the prepared splits, the validation gate
in front of training and the choice of production rows (windows, labelled rows, retraining sets)."""
