"""The synthetic task suite: task definitions and prompts (tasks), sound and speech synthesis (sounds), writing a
split as wav files plus a manifest (generate)."""
