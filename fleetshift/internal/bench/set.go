package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Sizes are the problem sizes of one set.
type Sizes struct {
	PollDevices   int
	PollDuration  time.Duration
	PlanSmall     int // plan_100k
	PlanLarge     int // plan_1m, and the devices cached for polling
	Dispatch      int
	NotifyDevices int
	NotifyPushes  int
	Reports       int
	// ReportsRollout is the rollout report_ingest_500k's reports come from.
	ReportsRollout int
	// Heartbeat is how many devices report an unchanged state in heartbeat.
	Heartbeat int
	Rollout   int
	// RolloutLarge is rollout_100k's simulated fleet.
	RolloutLarge int
	PauseDevices int
	Reps         int
	// RolloutTimeout bounds one rollout_10k repetition.
	RolloutTimeout time.Duration
}

// SetSizes returns the sizes of set "quick" or "full". full is the goal sizes; quick is small enough to
// finish in under 3 minutes and only smoke-tests the goals.
func SetSizes(set string) (Sizes, error) {
	switch set {
	case "full":
		return Sizes{PollDevices: 50_000, PollDuration: 10 * time.Second, PlanSmall: 100_000, PlanLarge: 1_000_000,
			Dispatch: 100_000, NotifyDevices: 1_000, NotifyPushes: 200, Reports: 50_000, ReportsRollout: 500_000,
			Heartbeat: 1_000_000, Rollout: 10_000, RolloutLarge: 100_000, PauseDevices: 1_000, Reps: 3, RolloutTimeout: 5 * time.Minute}, nil
	case "quick":
		return Sizes{PollDevices: 5_000, PollDuration: time.Second, PlanSmall: 10_000, PlanLarge: 50_000,
			Dispatch: 10_000, NotifyDevices: 1_000, NotifyPushes: 30, Reports: 10_000, ReportsRollout: 50_000,
			Heartbeat: 20_000, Rollout: 300, RolloutLarge: 1_000, PauseDevices: 200, Reps: 3, RolloutTimeout: time.Minute}, nil
	}
	return Sizes{}, fmt.Errorf("set %q: want quick or full", set)
}

// Measurement names, in table order. A group runs when any of its names is selected.
var groups = []struct {
	name  string
	names []string
}{
	{"poll", []string{"loadgen_ceiling", "poll_304", "poll_200"}},
	{"poll_pinned", []string{"poll_304_pinned"}},
	{"plan_100k", []string{"plan_100k"}},
	{"plan_1m", []string{"plan_1m", "rss_plan_1m", "rss_poll_cache"}},
	{"dispatch", []string{"dispatch"}},
	{"first_notify", []string{"first_notify"}},
	{"report_ingest", []string{"report_ingest"}},
	{"report_ingest_500k", []string{"report_ingest_500k"}},
	{"heartbeat", []string{"heartbeat"}},
	{"rollout_10k", []string{"rollout_10k"}},
	{"rollout_100k", []string{"rollout_100k", "rss_sim_100k"}},
	{"pause_reaction", []string{"pause_reaction"}},
}

// Names lists every measurement name in table order.
func Names() []string {
	var out []string
	for _, g := range groups {
		out = append(out, g.names...)
	}
	return out
}

// ParseOnly reads -only: comma-separated measurement or group names; empty selects everything. It
// returns the selected groups in run order.
func ParseOnly(s string) ([]string, error) {
	var want []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			want = append(want, p)
		}
	}
	var out []string
	known := map[string]bool{}
	for _, g := range groups {
		known[g.name] = true
		for _, n := range g.names {
			known[n] = true
		}
		if len(want) == 0 || slices.Contains(want, g.name) || slices.ContainsFunc(g.names, func(n string) bool { return slices.Contains(want, n) }) {
			out = append(out, g.name)
		}
	}
	for _, w := range want {
		if !known[w] {
			return nil, fmt.Errorf("-only %q: unknown measurement (known: %s)", w, strings.Join(Names(), ", "))
		}
	}
	return out, nil
}
