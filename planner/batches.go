package planner

// defaultPercentages are the cumulative batch percentages of a staged policy with 3 batches and no
// batch_percentages of its own.
var defaultPercentages = [...]int{10, 50, 100}

// Percentages returns the cumulative batch percentages a policy stands for: its own batch_percentages
// when set; otherwise [10, 50, 100] for 3 batches and an even cumulative split ending at 100 for any
// other count (1 -> [100], 2 -> [50, 100], 4 -> [25, 50, 75, 100]).
func Percentages(stagedBatches int, batchPercentages []int) []int {
	if len(batchPercentages) > 0 {
		return append([]int(nil), batchPercentages...)
	}
	if stagedBatches == 3 || stagedBatches <= 0 {
		return defaultPercentages[:]
	}
	out := make([]int, stagedBatches)
	for k := range out {
		out[k] = (k + 1) * 100 / stagedBatches
	}
	out[len(out)-1] = 100
	return out
}

// Batches splits n devices into batches by cumulative percentages (docs/contract.md): batch k ends at
// max(end(k-1)+1, ceil(n*p_k/100)), capped at n; empty batches are dropped. Empty percentages mean the
// default [10, 50, 100]. The sizes always sum to n: if the percentages stop short of 100, a last batch
// takes the rest. n = 0 gives no batches.
func Batches(n int, percentages []int) []int {
	if n <= 0 {
		return nil
	}
	if len(percentages) == 0 {
		percentages = defaultPercentages[:]
	}
	sizes := make([]int, 0, len(percentages)+1)
	end := 0
	for _, p := range percentages {
		if end >= n {
			break
		}
		p = min(max(p, 0), 100)
		e := min(max(end+1, ceilDiv(n*p, 100)), n)
		sizes = append(sizes, e-end)
		end = e
	}
	if end < n {
		sizes = append(sizes, n-end)
	}
	return sizes
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
