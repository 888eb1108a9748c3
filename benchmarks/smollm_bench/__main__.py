from benchmarks.smollm_bench import main

main()
