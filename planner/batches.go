package planner

import policies "github.com/fleetshift/fleetshift/shared/policy"

// Percentages returns the cumulative batch percentages a policy stands for (policies.Percentages): its
// own batch_percentages when set; otherwise [10, 50, 100] for 3 batches and an even cumulative split
// ending at 100 for any other count.
func Percentages(stagedBatches int, batchPercentages []int) []int {
	return policies.Percentages(stagedBatches, batchPercentages)
}

// Batches splits n devices into batches by cumulative percentages (policies.Batches, docs/contract.md).
func Batches(n int, percentages []int) []int { return policies.Batches(n, percentages) }
