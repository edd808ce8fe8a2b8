package planner

import (
	"slices"
	"testing"
)

func TestBatches(t *testing.T) {
	t.Parallel()
	cases := []struct {
		n    int
		pct  []int
		want []int
	}{
		{1, nil, []int{1}},
		{2, nil, []int{1, 1}},
		{3, nil, []int{1, 1, 1}},
		{5, nil, []int{1, 2, 2}},
		{20, nil, []int{2, 8, 10}},
		{1000, nil, []int{100, 400, 500}},
		{1_000_000, nil, []int{100_000, 400_000, 500_000}},
		{1, []int{10, 50, 100}, []int{1}},
		{20, []int{25, 100}, []int{5, 15}},
		{3, []int{1, 2, 3, 100}, []int{1, 1, 1}},
		{1000, []int{1, 5, 25, 100}, []int{10, 40, 200, 750}},
		{1_000_000, []int{1, 5, 25, 100}, []int{10_000, 40_000, 200_000, 750_000}},
		{7, []int{100}, []int{7}},
		{10, []int{50}, []int{5, 5}},         // stops short of 100: the rest is a last batch
		{2, []int{33, 66, 100}, []int{1, 1}}, // empty batch dropped
		{1_000_000, []int{33, 66, 100}, []int{330_000, 330_000, 340_000}},
		{0, nil, nil},
	}
	for _, c := range cases {
		got := Batches(c.n, c.pct)
		if !slices.Equal(got, c.want) {
			t.Errorf("Batches(%d, %v) = %v, want %v", c.n, c.pct, got, c.want)
		}
		sum := 0
		for _, s := range got {
			if s <= 0 {
				t.Errorf("Batches(%d, %v) has an empty batch: %v", c.n, c.pct, got)
			}
			sum += s
		}
		if sum != c.n {
			t.Errorf("Batches(%d, %v) sums to %d", c.n, c.pct, sum)
		}
	}
}

func TestPercentages(t *testing.T) {
	t.Parallel()
	cases := []struct {
		staged int
		pct    []int
		want   []int
	}{
		{3, nil, []int{10, 50, 100}},
		{1, nil, []int{100}},
		{2, nil, []int{50, 100}},
		{4, nil, []int{25, 50, 75, 100}},
		{6, nil, []int{16, 33, 50, 66, 83, 100}},
		{3, []int{5, 100}, []int{5, 100}},
	}
	for _, c := range cases {
		if got := Percentages(c.staged, c.pct); !slices.Equal(got, c.want) {
			t.Errorf("Percentages(%d, %v) = %v, want %v", c.staged, c.pct, got, c.want)
		}
	}
	p := &Policy{UpdateStrategy: StrategyAuto, StagedBatches: 3}
	if got := p.BatchSizes(20); !slices.Equal(got, []int{20}) {
		t.Errorf("auto: %v", got)
	}
	p.UpdateStrategy = StrategyStaged
	if got := p.BatchSizes(20); !slices.Equal(got, []int{2, 8, 10}) {
		t.Errorf("staged: %v", got)
	}
}
