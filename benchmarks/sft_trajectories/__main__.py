from benchmarks.sft_trajectories import main

main()
