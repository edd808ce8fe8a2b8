package bench

import (
	"context"
	"fmt"
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

// rolloutLarge is rollout_100k, and the simulator's peak memory holding that many NATS devices.
func (r *Runner) rolloutLarge(ctx context.Context) []Row {
	n := r.o.Sizes.RolloutLarge
	row, mem := r.rolloutOn(ctx, "rollout_100k", n, r.o.Sizes.RolloutTimeout)
	rss := Row{Name: "rss_sim_100k", Unit: "MiB", Goal: "< 4096 MiB",
		Note: fmt.Sprintf("peak RSS (VmHWM) of the simulator process (agent/sim, %s NATS devices, one connection each) over rollout_100k.", FormatValue(float64(n), ""))}
	switch {
	case mem.PeakRSS == 0 && row.Err != nil:
		rss.Err = fmt.Errorf("no simulator: %w", row.Err)
	default:
		rss.Value = float64(mem.PeakRSS) / (1 << 20)
		rss.Text = fmt.Sprintf("%s MiB (%s KiB per device)", FormatValue(rss.Value, ""), FormatValue(float64(mem.PeakRSS)/1024/float64(n), ""))
		rss.Pass = rss.Value < 4096
	}
	return []Row{row, rss}
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
	sim, err := StartChild(ctx, "sim", args.Args(), r.loadEnv(), time.Minute)
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
