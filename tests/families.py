"""The tiny model of every supported family: one list for every test parameterized over families."""

FAMILIES = [
    "tiny-random",
    "tiny-random-qwen2-audio",
    "tiny-random-phi4mm",
    "tiny-random-voxtral",
    "tiny-random-qwen3-omni",
]
