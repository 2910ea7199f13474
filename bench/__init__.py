"Benchmarks of sales-prediction-kafka against the best reference on the same machine, reported as ratios."
