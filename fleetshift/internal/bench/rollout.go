package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// SimArgs are the arguments of the `sim` subcommand the harness runs the device simulator with.
type SimArgs struct {
	Server, ProvisioningKey, AdminToken, Fleet, Image, Transport string
	Devices                                                      int
	Pull                                                         string
}

// Args renders the subcommand line.
func (a SimArgs) Args() []string {
	return []string{"sim", "-server", a.Server, "-key", a.ProvisioningKey, "-admin", a.AdminToken, "-fleet", a.Fleet,
		"-image", a.Image, "-devices", fmt.Sprint(a.Devices), "-transport", a.Transport, "-pull", a.Pull}
}

// rollout measures a full staged rollout over simulated devices (agent/sim in its own process).
func (r *Runner) rollout(ctx context.Context) Row {
	row, _ := r.rolloutOn(ctx, "rollout_10k", r.o.Sizes.Rollout, r.o.Sizes.RolloutTimeout)
	return row
}

// rolloutLarge is rollout_100k, and the simulator's peak memory holding that many NATS devices. When
// the open-file limit does not allow that many (one socket per device in the simulator and in the
// server), rollout_100k fails with that reason and the simulator's memory is measured over a rollout of
// as many devices as the limit allows, its figure for the full size a projection.
func (r *Runner) rolloutLarge(ctx context.Context) []Row {
	n := r.o.Sizes.RolloutLarge
	var row Row
	var mem ProcStatus
	m := n // the size the simulator's memory is measured at
	if err := CheckFileLimit(n); err != nil {
		row = Row{Name: "rollout_100k", Unit: "s", Goal: "< 60 s end to end", Err: err}
		if m, err = MaxFileLimitDevices(); err == nil && m < minSimMemoryDevices {
			err = fmt.Errorf("RLIMIT_NOFILE allows only %d NATS devices", m)
		}
		if err != nil {
			return []Row{row, {Name: "rss_sim_100k", Unit: "MiB", Goal: "< 4096 MiB", Err: err}}
		}
		r.progress("   %v; simulator memory measured at %d devices", row.Err, m)
		var at Row
		at, mem = r.rolloutOn(ctx, fmt.Sprintf("rss_sim_%d", m), m, r.o.Sizes.RolloutTimeout)
		return []Row{row, simMemoryRow(n, m, mem, at.Err)}
	}
	row, mem = r.rolloutOn(ctx, "rollout_100k", n, r.o.Sizes.RolloutTimeout)
	return []Row{row, simMemoryRow(n, m, mem, row.Err)}
}

// minSimMemoryDevices is the fewest devices a per-device memory figure is worth projecting from.
const minSimMemoryDevices = 1000

// simMemoryRow is rss_sim_100k: the simulator's peak RSS holding n devices, measured at m (<= n) and
// projected linearly when m < n (fixed overhead included in the per-device figure, so the projection
// errs high). A rollout that failed on the way is said in the note.
func simMemoryRow(n, m int, mem ProcStatus, rolloutErr error) Row {
	rss := Row{Name: "rss_sim_100k", Unit: "MiB", Goal: "< 4096 MiB",
		Note: fmt.Sprintf("peak RSS (VmHWM) of the simulator process (agent/sim, %s NATS devices, one connection each, lightweight NATS client) over rollout_100k.", FormatValue(float64(n), ""))}
	if m < n {
		rss.Note = fmt.Sprintf("peak RSS (VmHWM) of the simulator process (agent/sim, NATS devices, one connection each, lightweight NATS client) "+
			"measured over a staged rollout of %s devices, the most RLIMIT_NOFILE allows here (one socket per device in the simulator and in the server, + 1,024 files); "+
			"the %s-device figure is a PROJECTION (measured KiB per device x %s), not a measurement.",
			FormatValue(float64(m), ""), FormatValue(float64(n), ""), FormatValue(float64(n), ""))
	}
	if mem.PeakRSS == 0 {
		rss.Err = errors.New("no simulator memory read")
		if rolloutErr != nil {
			rss.Err = fmt.Errorf("no simulator: %w", rolloutErr)
		}
		return rss
	}
	if rolloutErr != nil {
		rss.Note += fmt.Sprintf(" The rollout did not finish (%v): the peak covers what ran.", rolloutErr)
	}
	perDevice := float64(mem.PeakRSS) / float64(m) // bytes
	if m == n {
		rss.Value = float64(mem.PeakRSS) / (1 << 20)
		rss.Text = fmt.Sprintf("%s MiB (%s KiB per device)", FormatValue(rss.Value, ""), FormatValue(perDevice/1024, ""))
	} else {
		rss.Value = perDevice * float64(n) / (1 << 20)
		rss.Text = fmt.Sprintf("projected %s MiB at %s devices (measured %s MiB at %s devices: %s KiB per device)",
			FormatValue(rss.Value, ""), FormatValue(float64(n), ""), FormatValue(float64(mem.PeakRSS)/(1<<20), ""),
			FormatValue(float64(m), ""), FormatValue(perDevice/1024, ""))
	}
	rss.Pass = rss.Value < 4096
	return rss
}

// rolloutOn measures n simulated devices through a staged rollout and returns the simulator's memory
// at the end.
func (r *Runner) rolloutOn(ctx context.Context, name string, n int, timeout time.Duration) (row Row, mem ProcStatus) {
	const repo = "docker.io/bench/sim"
	row = Row{Name: name, Unit: "s", Goal: "< 60 s end to end",
		Note: fmt.Sprintf("%s devices simulated by agent/sim in its own process (NATS transport, one connection per device, pull time 10-50 ms, all healthy); staged [10,50,100], zero batch delay, health checks on: webhook POST -> rollout completed. Baseline: the sum of its parts at this size from this run's plan_100k, dispatch and report_ingest rates.", FormatValue(float64(n), ""))}
	if err := CheckFileLimit(n); err != nil {
		row.Err = err
		return row, mem
	}
	srv, err := r.startServer(ctx, name)
	if err != nil {
		row.Err = err
		return row, mem
	}
	defer r.stopServer(srv)
	var pk struct {
		Key string `json:"key"`
	}
	if err := srv.Admin(ctx, "POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "bench-sim"}, 201, &pk); err != nil {
		row.Err = err
		return row, mem
	}
	if err := srv.Policy(ctx, map[string]any{"image_pattern": "bench/sim", "update_strategy": "staged",
		"staged_batches": 3, "batch_percentages": []int{10, 50, 100}, "batch_delay_seconds": 0, "health_check_enabled": true,
		"health_check_timeout_seconds": 120, "max_failure_rate": 0.2, "description": "bench " + name}); err != nil {
		row.Err = err
		return row, mem
	}
	args := SimArgs{Server: srv.HTTPURL, ProvisioningKey: pk.Key, AdminToken: srv.AdminToken, Fleet: "bench-sim",
		Image: "bench/sim:1.0", Transport: "nats", Devices: n, Pull: "10ms-50ms"}
	env := r.loadEnv()
	if r.o.ProfileDir != "" {
		env = append(env, EnvSimHeapProfile+"="+filepath.Join(r.o.ProfileDir, name+"-sim.heap.pprof"))
	}
	sim, err := StartChild(ctx, "sim", args.Args(), env, time.Minute)
	if err != nil {
		row.Err = err
		return row, mem
	}
	defer func() {
		if m, err := sim.Memory(); err == nil {
			mem = m
		}
		if err := sim.Stop(time.Minute); err != nil {
			r.progress("   warning: %v", err)
		}
	}()
	start := time.Now()
	err = poll(ctx, timeout*4, 250*time.Millisecond, fmt.Sprintf("%d simulated devices registered on 1.0", n), func() (bool, error) {
		var running int
		err := r.db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_images i JOIN devices d ON d.uuid = i.device_uuid
			WHERE d.fleet_id = 'bench-sim' AND i.repository = $1 AND i.tag = '1.0'`, repo).Scan(&running)
		return running >= n, err
	})
	if err != nil {
		row.Err = err
		return row, mem
	}
	r.progress("   %d simulated devices up in %s", n, time.Since(start).Round(time.Second))
	var times []float64
	for i := range r.o.Sizes.Reps + 1 { // the first is the warm-up
		tag := fmt.Sprintf("%d.0", i+2)
		start := time.Now()
		if err := srv.Push(ctx, "bench/sim", tag); err != nil {
			row.Err = err
			return row, mem
		}
		var ro Rollout
		err := poll(ctx, timeout, 20*time.Millisecond, "rollout of "+tag+" finished", func() (bool, error) {
			var found bool
			var err error
			ro, found, err = r.findRollout(ctx, repo, tag)
			if err != nil || !found {
				return false, err
			}
			switch ro.Status {
			case "completed":
				return true, nil
			case "failed", "cancelled", "rolled_back", "superseded", "paused":
				return false, fmt.Errorf("rollout %s ended %s", ro.ID, ro.Status)
			}
			return false, nil
		})
		if err != nil {
			row.Err = err
			return row, mem
		}
		if ro.TotalDevices != n {
			row.Err = fmt.Errorf("rollout %s covered %d devices, want %d", ro.ID, ro.TotalDevices, n)
			return row, mem
		}
		d := time.Since(start)
		r.progress("   rollout %s: %s", tag, d.Round(time.Millisecond))
		if i > 0 {
			times = append(times, d.Seconds())
		}
	}
	row.Value = Median(times)
	row.Pass = row.Value < 60
	if r.planPerDevice > 0 && r.dispatchRate > 0 && r.reportRate > 0 {
		row.Baseline = float64(n)*r.planPerDevice + float64(n)/r.dispatchRate + float64(n)/r.reportRate
	} else {
		row.BaselineText = "n/a (needs plan_100k, dispatch, report_ingest)"
	}
	return row, mem
}
