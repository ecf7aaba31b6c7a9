"""Network definitions written for this project, with loaders for their published checkpoints."""
