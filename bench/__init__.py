"""Performance benchmark: FLOP arithmetic (flops), prefill timing and memory (prefill), the pipeline end to end
(pipeline), the load run (loadrun), the suite and its report (suite, report). Entry points: `python -m jobs.bench`,
`python -m jobs.loadtest`; committed results under bench/results/."""
