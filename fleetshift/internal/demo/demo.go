// Package demo runs fleetshift's self-contained demonstration: a throwaway database and server on free
// ports, 200 simulated devices, a staged policy, one healthy rollout to the end, and one failing rollout
// that pauses itself and rolls back. It cleans up after itself.
package demo

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/fleetshift/internal/cli"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pg"
)

// Options tune the demo.
type Options struct {
	// ServerURL is any database URL on the PostgreSQL server to use (default $DATABASE_URL, else the local one);
	// the demo creates and drops its own database there.
	ServerURL string
	Devices   int
	Out       io.Writer
	// OnDatabase, when set, is told the throwaway database's name (tests check it is dropped).
	OnDatabase func(name string)
}

// Run plays the demo and returns when it is over (or ctx ends), after cleaning up.
func Run(ctx context.Context, o Options) error {
	out := cmp.Or[io.Writer](o.Out, os.Stdout)
	n := cmp.Or(o.Devices, 200)
	started := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "[%5.1fs] "+format+"\n", append([]any{time.Since(started).Seconds()}, args...)...)
	}
	scratch, err := pg.CreateScratch(ctx, cmp.Or(o.ServerURL, os.Getenv("DATABASE_URL"), pg.DefaultLocalURL), "fleetshift_demo_")
	if err != nil {
		return fmt.Errorf("the demo needs a PostgreSQL server (set DATABASE_URL): %w", err)
	}
	if o.OnDatabase != nil {
		o.OnDatabase(scratch.Name)
	}
	defer scratch.Drop(ctx)
	dbURL := scratch.URL
	dataDir, err := os.MkdirTemp("", "fleetshift-demo-")
	if err != nil {
		return fmt.Errorf("create demo data dir: %w", err)
	}
	defer os.RemoveAll(dataDir)
	cfg, err := config.FromLookup(func(k string) (string, bool) {
		v, ok := map[string]string{"DATABASE_URL": dbURL, "FLEETSHIFT_HTTP_ADDR": "127.0.0.1:0",
			"FLEETSHIFT_NATS_ADDR": "127.0.0.1:0", "FLEETSHIFT_DATA_DIR": dataDir}[k]
		return v, ok
	})
	if err != nil {
		return err
	}
	srv, err := server.Start(ctx, server.Options{Config: cfg, Log: logging.Nop(), EmbedNATS: true,
		Tune: server.Tuning{TickInterval: 100 * time.Millisecond}})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	say("server up: HTTP %s, NATS %s, throwaway database", srv.HTTPURL, srv.NATSURL)
	api := &client{Client: cli.Client{BaseURL: srv.HTTPURL, Token: srv.AdminToken, HTTP: http.DefaultClient}}

	var key struct {
		Key string `json:"key"`
	}
	if err := api.Do(ctx, "POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "demo"}, &key); err != nil {
		return err
	}
	if err := api.Do(ctx, "POST", "/api/v1/image-policies", map[string]any{
		"image_pattern": "acme/app:*", "update_strategy": "staged", "batch_percentages": []int{10, 50, 100},
		"batch_delay_seconds": 1, "health_check_enabled": true, "health_check_timeout_seconds": 20,
		"auto_rollback_enabled": true, "max_failure_rate": 0.2, "min_sample_size": 10,
		"description": "demo: staged 10/50/100, pause above 20% failures, roll back",
	}, nil); err != nil {
		return err
	}
	say("policy acme/app:* staged 10%% -> 50%% -> 100%%, 1 s between batches, auto-rollback above 20%% failures")

	simCtx, stopSim := context.WithCancel(ctx)
	defer stopSim()
	s, err := sim.New(sim.Config{Server: srv.HTTPURL, ProvisioningKey: key.Key, AdminToken: srv.AdminToken, Fleet: "demo",
		Devices: n, Images: []string{"acme/app:1.0"}, Seed: 1, PullMin: 100 * time.Millisecond, PullMax: 600 * time.Millisecond,
		PollInterval: 2 * time.Second, Heartbeat: 5 * time.Second, NamePrefix: "demo", Log: logging.Nop(),
		FailRates: []sim.Rate{mustRate("acme/app:2.1=0.6")}})
	if err != nil {
		return err
	}
	simDone := make(chan error, 1)
	go func() { simDone <- s.Run(simCtx) }()
	if err := until(ctx, 60*time.Second, func() bool { return s.Counters().Healthy == n }); err != nil {
		return fmt.Errorf("devices did not come up: %s", s.Counters())
	}
	say("%d simulated devices registered and running acme/app:1.0", n)

	for _, step := range []struct{ tag, expect string }{{"2.0", "completed"}, {"2.1", "paused"}} {
		say("registry webhook: acme/app:%s pushed", step.tag)
		if err := api.webhook(ctx, srv.WebhookToken, "acme/app", step.tag); err != nil {
			return err
		}
		r, err := api.follow(ctx, "acme/app", step.tag, say)
		if err != nil {
			return err
		}
		if r.Status != step.expect {
			return fmt.Errorf("rollout of %s ended %s, expected %s", step.tag, r.Status, step.expect)
		}
		if step.expect == "paused" {
			if err := until(ctx, 20*time.Second, func() bool {
				rr, err := api.rollout(ctx, r.ID)
				return err == nil && rr.Failed == 0 && rr.RolledBack > 0
			}); err != nil {
				return fmt.Errorf("failed devices were not rolled back")
			}
			rr, _ := api.rollout(ctx, r.ID)
			say("auto-paused at %.0f%% failures; %d failed devices rolled back to their old image, later batches never touched",
				r.FailureRate*100, rr.RolledBack)
		}
	}
	c := s.Counters()
	say("fleet now: %v; done in %s", c.ByImage, time.Since(started).Round(100*time.Millisecond))
	stopSim()
	<-simDone
	return nil
}

func mustRate(s string) sim.Rate {
	r, err := sim.ParseRate(s)
	if err != nil {
		panic(err)
	}
	return r
}

func until(ctx context.Context, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return context.DeadlineExceeded
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// client is the admin API client with the demo's few rollout helpers.
type client struct{ cli.Client }

func (c *client) webhook(ctx context.Context, token, repo, tag string) error {
	body := map[string]any{"push_data": map[string]any{"tag": tag, "pushed_at": time.Now().Unix(), "pusher": "demo"},
		"repository": map[string]any{"repo_name": repo}}
	hook := c.Client
	hook.Token = token // registries present the webhook token as a bearer token too
	return hook.Do(ctx, "POST", "/api/v1/webhooks/docker-registry", body, nil)
}

type rollout struct {
	ID           string  `json:"rollout_id"`
	Status       string  `json:"status"`
	NewTag       string  `json:"new_tag"`
	CurrentBatch int     `json:"current_batch"`
	BatchSizes   []int   `json:"batch_sizes"`
	Updated      int     `json:"updated_devices"`
	Failed       int     `json:"failed_devices"`
	RolledBack   int     `json:"rolled_back_devices"`
	FailureRate  float64 `json:"failure_rate"`
}

func (c *client) rollout(ctx context.Context, id string) (rollout, error) {
	var r rollout
	err := c.Do(ctx, "GET", "/api/v1/rollouts/"+id, nil, &r)
	return r, err
}

// follow waits for the rollout of repo:tag and prints its progress until it stops moving.
func (c *client) follow(ctx context.Context, repo, tag string, say func(string, ...any)) (rollout, error) {
	var r rollout
	if err := until(ctx, 20*time.Second, func() bool {
		var list struct {
			Rollouts []rollout `json:"rollouts"`
		}
		if c.Do(ctx, "GET", "/api/v1/rollouts?image_name="+repo, nil, &list) != nil {
			return false
		}
		for _, x := range list.Rollouts {
			if x.NewTag == tag {
				r = x
				return true
			}
		}
		return false
	}); err != nil {
		return r, fmt.Errorf("no rollout for %s:%s", repo, tag)
	}
	say("rollout %s planned: batches %v", r.ID, r.BatchSizes)
	last := ""
	err := until(ctx, 40*time.Second, func() bool {
		cur, err := c.rollout(ctx, r.ID)
		if err != nil {
			return false
		}
		r = cur
		line := fmt.Sprintf("%s batch %d/%d updated %d failed %d rolled back %d", r.Status, r.CurrentBatch, len(r.BatchSizes), r.Updated, r.Failed, r.RolledBack)
		if line != last {
			say("  %s", line)
			last = line
		}
		switch r.Status {
		case "completed", "paused", "failed", "cancelled", "rolled_back":
			return true
		}
		return false
	})
	return r, err
}
