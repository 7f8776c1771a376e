"""Trainers: `RGSDTrainer` and `RubricGRPOTrainer`, both `trl.GRPOTrainer` subclasses."""
