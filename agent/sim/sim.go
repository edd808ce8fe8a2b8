// Package sim simulates a fleet of devices in one process against a fleetshift server: each device
// registers with the provisioning key, runs the real device engine (package device) over the simulated
// runtime, and follows its target over NATS or HTTP. The simulator sets the fleet default and each new
// device's target to the configured images through the admin API. It is the engine of
// `fleetshift-agent sim` and can be run in-process by end-to-end tests (New, Run, Counters).
package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/agent/client"
	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/wire"
)

// Transports.
const (
	TransportNATS = "nats"
	TransportHTTP = "http"
)

// NATS clients of the simulated devices.
const (
	NATSClientLight = "light"
	NATSClientGo    = "nats.go"
)

// Config configures a simulation.
type Config struct {
	// Server is the fleetshift HTTP base url (required); ProvisioningKey registers the devices (required).
	Server          string
	ProvisioningKey string
	// AdminToken authorises setting targets; without it the devices keep whatever the server gives them.
	AdminToken string
	// Fleet is the fleet whose default target is set; empty: read from the first device.
	Fleet string
	// Devices is the number of simulated devices (required, > 0).
	Devices int
	// Transport is "nats" (default: one NATS connection per device, as its credentials demand, with
	// HTTP as fallback) or "http" (polling over one shared HTTP connection pool).
	Transport string
	// NATSClient is each device's NATS client over the nats transport: "light" (default: the simulator's
	// own connection, package lightnats, a small fraction of nats.go's memory per device; nats.go when the
	// server needs TLS) or "nats.go" (the agent's).
	NATSClient string
	// NATSURL overrides the NATS url handed out at registration.
	NATSURL string
	// Prefix is the NATS subject prefix (default "fleet").
	Prefix string
	// Images are the images the devices start on, one service each.
	Images []string
	// FailRates and SilentRates: see Rate.
	FailRates   []Rate
	SilentRates []Rate
	// FailAttempts, when > 0, makes a failing device fail only its first FailAttempts starts of an
	// image: a retry (the target's service "retry" changed) beyond them runs healthy.
	FailAttempts int
	// PullMin..PullMax is the simulated pull time (default 200ms..2s).
	PullMin, PullMax time.Duration
	// Seed makes failures reproducible.
	Seed uint64
	// StateDir keeps each device's identity so a restarted simulation reuses its devices.
	StateDir string
	// NamePrefix names the devices <NamePrefix>-<index> (default "sim-<seed>").
	NamePrefix string
	// PollInterval and Heartbeat tune the devices (defaults 10s and 30s).
	PollInterval, Heartbeat time.Duration
	// RegisterConcurrency bounds concurrent registrations (default 32).
	RegisterConcurrency int
	// Summary, when set, receives a one-line summary every SummaryEvery (default 5s).
	Summary      io.Writer
	SummaryEvery time.Duration
	// HTTPClient is shared by every device (default: a pooled client).
	HTTPClient *http.Client
	Log        zerolog.Logger
}

// Sim is a running simulation.
type Sim struct {
	cfg        Config
	api        *client.Client
	mu         sync.Mutex
	devices    []*simDevice
	registered atomic.Int64
	regErrors  atomic.Int64
}

type simDevice struct {
	index int
	id    client.Identity
	rt    *deviceRuntime
	agent *device.Agent
}

// New validates cfg and returns a simulation; Run starts it.
func New(cfg Config) (*Sim, error) {
	if cfg.Server == "" || cfg.ProvisioningKey == "" {
		return nil, errors.New("sim: server and provisioning key are required")
	}
	if cfg.Devices <= 0 {
		return nil, errors.New("sim: devices must be > 0")
	}
	cfg.Transport = cmp.Or(cfg.Transport, TransportNATS)
	if cfg.Transport != TransportNATS && cfg.Transport != TransportHTTP {
		return nil, fmt.Errorf("sim: transport %q: want nats or http", cfg.Transport)
	}
	cfg.NATSClient = cmp.Or(cfg.NATSClient, NATSClientLight)
	if cfg.NATSClient != NATSClientLight && cfg.NATSClient != NATSClientGo {
		return nil, fmt.Errorf("sim: nats client %q: want light or nats.go", cfg.NATSClient)
	}
	if cfg.PullMin == 0 && cfg.PullMax == 0 {
		cfg.PullMin, cfg.PullMax = 200*time.Millisecond, 2*time.Second
	}
	if cfg.PullMax < cfg.PullMin {
		return nil, fmt.Errorf("sim: pull time range %s-%s is empty", cfg.PullMin, cfg.PullMax)
	}
	for _, r := range append(slices.Clone(cfg.FailRates), cfg.SilentRates...) {
		if _, err := path.Match(r.Glob, ""); err != nil {
			return nil, fmt.Errorf("sim: rate glob %q: %w", r.Glob, err)
		}
	}
	cfg.NamePrefix = cmp.Or(cfg.NamePrefix, "sim-"+strconv.FormatUint(cfg.Seed, 10))
	cfg.PollInterval = cmp.Or(cfg.PollInterval, 10*time.Second)
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, 30*time.Second)
	cfg.RegisterConcurrency = cmp.Or(cfg.RegisterConcurrency, 32)
	cfg.SummaryEvery = cmp.Or(cfg.SummaryEvery, 5*time.Second)
	api, err := client.New(cfg.Server, cfg.HTTPClient)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	return &Sim{cfg: cfg, api: api}, nil
}

// GCPercent is the garbage collector setting (GOGC) a simulator process runs with unless GOGC is set
// (SetGC). Its heap is mostly long-lived per-device state, and at the default 100 the heap may grow to
// twice that plus the devices' goroutine stacks (which count towards the collector's goal) before a
// collection: a tighter goal trades some CPU for much of a large fleet's memory.
const GCPercent = 50

// SetGC applies GCPercent to this process unless the GOGC environment variable chooses. Commands that
// run a simulator as their process call it; an in-process simulation (a test) leaves the collector alone.
func SetGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
}

// ParsePullTime reads "200ms-2s" (or a single duration).
func ParsePullTime(s string) (lo, hi time.Duration, err error) {
	a, b, found := strings.Cut(s, "-")
	if lo, err = time.ParseDuration(strings.TrimSpace(a)); err != nil {
		return 0, 0, fmt.Errorf("pull time %q: %w", s, err)
	}
	hi = lo
	if found {
		if hi, err = time.ParseDuration(strings.TrimSpace(b)); err != nil {
			return 0, 0, fmt.Errorf("pull time %q: %w", s, err)
		}
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("pull time %q: upper bound below lower", s)
	}
	return lo, hi, nil
}

// TargetApps returns the apps document of a target running images, one service each (app "1").
func TargetApps(images []string) map[string]wire.App {
	app := wire.App{AppID: []byte("1"), AppName: "sim"}
	used := map[string]int{}
	for i, img := range images {
		name := img
		if j := strings.IndexAny(name, "@"); j >= 0 {
			name = name[:j]
		}
		if j := strings.LastIndex(name, ":"); j > strings.LastIndex(name, "/") {
			name = name[:j]
		}
		name = path.Base(name)
		used[name]++
		if used[name] > 1 {
			name = fmt.Sprintf("%s-%d", name, used[name])
		}
		app.Services = append(app.Services, wire.Service{
			ServiceID:   []byte(strconv.Itoa(i + 1)),
			ServiceName: name,
			ImageName:   img,
			Config:      map[string]any{"image": img},
		})
	}
	return map[string]wire.App{"1": app}
}

// Run registers the devices, sets their targets and runs them until ctx ends. It returns an error only
// when the simulation cannot start (the first device cannot register, targets cannot be set).
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// Run runs the simulation until ctx ends; nil on a clean stop.
func (s *Sim) Run(ctx context.Context) error {
	if s.cfg.Transport == TransportNATS {
		if err := raiseFileLimit(s.cfg.Devices); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.cfg.Summary != nil {
		wg.Go(func() {
			t := time.NewTicker(s.cfg.SummaryEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					fmt.Fprintln(s.cfg.Summary, s.Counters().String())
				}
			}
		})
	}
	// The first device alone: it tells the fleet, whose default then covers every later registration.
	first, isNew, err := s.register(ctx, 0)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	if s.cfg.AdminToken != "" && len(s.cfg.Images) > 0 && isNew {
		fleet := s.cfg.Fleet
		if fleet == "" {
			d, err := s.api.GetDevice(ctx, s.cfg.AdminToken, first.id.UUID)
			if err != nil {
				return fmt.Errorf("sim: find fleet: %w", err)
			}
			fleet = d.FleetID
		}
		if fleet != "" {
			if err := s.api.PutFleetTarget(ctx, s.cfg.AdminToken, fleet, TargetApps(s.cfg.Images), nil); err != nil {
				return fmt.Errorf("sim: %w", err)
			}
		}
		if err := s.setTarget(ctx, first); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
	}
	s.start(ctx, &wg, first)
	next := atomic.Int64{}
	next.Store(1)
	var regWG sync.WaitGroup
	for range min(s.cfg.RegisterConcurrency, s.cfg.Devices) {
		regWG.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= s.cfg.Devices {
					return
				}
				for ctx.Err() == nil {
					d, isNew, err := s.register(ctx, i)
					if err == nil && isNew && s.cfg.AdminToken != "" && len(s.cfg.Images) > 0 {
						err = s.setTarget(ctx, d)
					}
					if err == nil {
						s.start(ctx, &wg, d)
						break
					}
					s.regErrors.Add(1)
					var se *client.StatusError
					if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != http.StatusTooManyRequests {
						s.cfg.Log.Error().Err(err).Int("device", i).Msg("device refused; giving up on it")
						break
					}
					s.cfg.Log.Warn().Err(err).Int("device", i).Msg("device could not join; retrying")
					t := time.NewTimer(time.Second)
					select {
					case <-ctx.Done():
					case <-t.C:
					}
					t.Stop()
				}
			}
		})
	}
	regWG.Wait()
	<-ctx.Done()
	return nil
}

func (s *Sim) register(ctx context.Context, i int) (*simDevice, bool, error) {
	name := fmt.Sprintf("%s-%d", s.cfg.NamePrefix, i)
	var (
		id    client.Identity
		isNew = true
		err   error
	)
	if s.cfg.StateDir != "" {
		dir := filepath.Join(s.cfg.StateDir, "devices", strconv.Itoa(i))
		var ok bool
		if id, ok, err = device.LoadIdentity(dir); err != nil {
			return nil, false, err
		}
		isNew = !ok
		if !ok {
			if id, err = s.api.Register(ctx, s.cfg.ProvisioningKey, name, []string{"sim"}); err != nil {
				return nil, false, err
			}
			if err := device.SaveIdentity(dir, id); err != nil {
				return nil, false, err
			}
		}
	} else if id, err = s.api.Register(ctx, s.cfg.ProvisioningKey, name, []string{"sim"}); err != nil {
		return nil, false, err
	}
	s.registered.Add(1)
	d, err := s.newDevice(i, id)
	return d, isNew, err
}

// newDevice builds simulated device i, registered as id, ready to start.
func (s *Sim) newDevice(i int, id client.Identity) (*simDevice, error) {
	d := &simDevice{index: i, id: id}
	d.rt = &deviceRuntime{sim: s, index: i}
	agent, err := device.New(device.Config{
		Identity:     id,
		HTTP:         s.api,
		NATSURL:      s.cfg.NATSURL,
		DisableNATS:  s.cfg.Transport == TransportHTTP,
		Prefix:       s.cfg.Prefix,
		Runtime:      d.rt,
		PollInterval: s.cfg.PollInterval,
		Heartbeat:    s.cfg.Heartbeat,
		Silent:       d.rt.silent.Load,
		Seed:         s.cfg.Seed*1_000_003 + uint64(i) + 1,
		Dial:         dialer(s.cfg.NATSClient, i),
		// A hook rather than a logger context: the context would keep a 500-byte buffer per device.
		Log: s.cfg.Log.Hook(deviceField(id.UUID)).Level(max(s.cfg.Log.GetLevel(), zerolog.WarnLevel)),
	})
	if err != nil {
		return nil, err
	}
	d.agent = agent
	return d, nil
}

// deviceField adds the device's uuid to each of its log lines.
type deviceField string

func (d deviceField) Run(e *zerolog.Event, _ zerolog.Level, _ string) { e.Str("device", string(d)) }

func (s *Sim) setTarget(ctx context.Context, d *simDevice) error {
	return s.api.PutDeviceTarget(ctx, s.cfg.AdminToken, d.id.UUID, TargetApps(s.cfg.Images), nil)
}

func (s *Sim) start(ctx context.Context, wg *sync.WaitGroup, d *simDevice) {
	s.mu.Lock()
	s.devices = append(s.devices, d)
	s.mu.Unlock()
	wg.Go(func() {
		if err := d.agent.Run(ctx); err != nil {
			s.cfg.Log.Error().Err(err).Str("device", d.id.UUID).Msg("simulated device stopped")
		}
	})
}

// Counters summarise the fleet as the simulated runtimes see it.
type Counters struct {
	Devices    int // configured
	Registered int
	Running    int            // devices whose agent runs
	ByImage    map[string]int // comma-joined images of a device -> devices
	Healthy    int            // every service running and healthy
	Failed     int            // some service exited or unhealthy
	Updating   int            // pulling
	Silent     int            // gone dark
	Reports    int64          // reports delivered
	Ignored    int64          // targets ignored as not newer
	RegErrors  int64
	// PulledAhead counts, per image, the devices that downloaded it ahead (a target's prefetch).
	PulledAhead map[string]int
}

// String is the one-line summary.
func (c Counters) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "devices %d/%d running", c.Running, c.Devices)
	for _, img := range slices.Sorted(maps.Keys(c.ByImage)) {
		name := img
		if name == "" {
			name = "(none)"
		}
		fmt.Fprintf(&b, " | %s=%d", name, c.ByImage[img])
	}
	fmt.Fprintf(&b, " | healthy %d failed %d updating %d silent %d | reports %d ignored %d", c.Healthy, c.Failed, c.Updating, c.Silent, c.Reports, c.Ignored)
	if c.RegErrors > 0 {
		fmt.Fprintf(&b, " registration errors %d", c.RegErrors)
	}
	return b.String()
}

// Counters reads the simulation's counters; safe while it runs.
func (s *Sim) Counters() Counters {
	s.mu.Lock()
	devs := slices.Clone(s.devices)
	s.mu.Unlock()
	c := Counters{Devices: s.cfg.Devices, Registered: int(s.registered.Load()), Running: len(devs), ByImage: map[string]int{},
		RegErrors: s.regErrors.Load(), PulledAhead: map[string]int{}}
	for _, d := range devs {
		for _, img := range d.rt.pulledImages() {
			c.PulledAhead[img]++
		}
		img, healthy, failed, updating := d.rt.snapshot()
		c.ByImage[img]++
		if healthy {
			c.Healthy++
		}
		if failed {
			c.Failed++
		}
		if updating {
			c.Updating++
		}
		if d.rt.silent.Load() {
			c.Silent++
		}
		st := d.agent.Stats()
		c.Reports += st.ReportsSent
		c.Ignored += st.Ignored
	}
	return c
}

// Device is one simulated device as tests see it.
type Device struct {
	Index  int
	UUID   string
	Images string // comma-joined images it runs
	Status device.Stats
}

// Devices lists the running simulated devices.
func (s *Sim) Devices() []Device {
	s.mu.Lock()
	devs := slices.Clone(s.devices)
	s.mu.Unlock()
	out := make([]Device, 0, len(devs))
	for _, d := range devs {
		img, _, _, _ := d.rt.snapshot()
		out = append(out, Device{Index: d.index, UUID: d.id.UUID, Images: img, Status: d.agent.Stats()})
	}
	return out
}
