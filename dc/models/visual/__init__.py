"""Visual-input modes: how the views of one input (video frames, AnyRes crops) merge after the projector."""
