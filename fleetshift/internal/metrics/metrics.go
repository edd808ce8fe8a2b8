// Package metrics exposes fleetshift's Prometheus metrics (names prefixed fleetshift_): HTTP latency, and
// at scrape time rollouts by status, auto-paused rollouts, active rollouts' failure rates, devices by
// rollout status, registered and online devices, the outbox backlog, notification deliveries by status,
// JetStream consumer backlogs and stream throughput counters. deploy/monitoring's dashboard and alert
// rules use only these (TestMonitoringNamesExportedMetrics).
package metrics

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/streams"
)

// Registry is one process's metrics.
type Registry struct {
	reg         *prometheus.Registry
	http        *prometheus.HistogramVec
	deadLetters *prometheus.CounterVec
}

// New returns a registry with Go and process collectors, the HTTP histogram, and a collector reading
// PostgreSQL and JetStream at scrape time.
func New(pool *pgxpool.Pool, js jetstream.JetStream, subj streams.Subjects, log zerolog.Logger) *Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetshift_http_request_duration_seconds",
		Help:    "HTTP request latency by route and status.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"method", "route", "status"})
	reg.MustRegister(h)
	dl := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetshift_deadletter_total",
		Help: "Messages a consumer terminated and recorded in the dead-letter stream, by consumer and reason (decode, invalid, data, max_deliver).",
	}, []string{"consumer", "reason"})
	reg.MustRegister(dl)
	if pool != nil {
		reg.MustRegister(&stateCollector{pool: pool, js: js, subj: subj, log: log})
	}
	return &Registry{reg: reg, http: h, deadLetters: dl}
}

// DeadLetter counts one message dead-lettered by consumer for reason (fleetshift_deadletter_total). It
// has the shape of the services' DeadLetterCount hook; a nil Registry counts nothing.
func (r *Registry) DeadLetter(consumer, reason string) {
	if r == nil {
		return
	}
	r.deadLetters.WithLabelValues(consumer, reason).Inc()
}

// Register adds collectors (e.g. a service's counters).
func (r *Registry) Register(cs ...prometheus.Collector) {
	for _, c := range cs {
		r.reg.MustRegister(c)
	}
}

// Middleware records each request's latency under its route pattern (not the raw path, so ids do not
// explode the label set).
func (r *Registry) Middleware() fiber.Handler {
	return func(c *fiber.Ctx) error {
		start := time.Now()
		err := c.Next()
		status := c.Response().StatusCode()
		if err != nil { // the error handler writes the status after this middleware returns
			status = apierr.Status(err)
			var fe *fiber.Error
			if errors.As(err, &fe) {
				status = fe.Code
			}
		}
		route := "unmatched"
		if rt := c.Route(); rt != nil && rt.Path != "/" && rt.Path != "" {
			route = rt.Path
		}
		// Fiber's strings point into reused request buffers; Prometheus keeps label values, so clone them.
		r.http.WithLabelValues(strings.Clone(c.Method()), strings.Clone(route), strconv.Itoa(status)).Observe(time.Since(start).Seconds())
		return err
	}
}

// Handler serves /metrics.
func (r *Registry) Handler() fiber.Handler {
	return adaptor.HTTPHandler(promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}))
}

var (
	descRollouts = prometheus.NewDesc("fleetshift_rollouts", "Rollouts by status.", []string{"status"}, nil)
	descDevices  = prometheus.NewDesc("fleetshift_rollout_devices", "Devices of active rollouts by rollout status.", []string{"status"}, nil)
	descPending  = prometheus.NewDesc("fleetshift_jetstream_consumer_pending", "Messages not yet delivered to a consumer.", []string{"stream", "consumer"}, nil)
	descAckPend  = prometheus.NewDesc("fleetshift_jetstream_consumer_ack_pending", "Messages delivered to a consumer and not yet acknowledged.", []string{"stream", "consumer"}, nil)
	descMsgs     = prometheus.NewDesc("fleetshift_stream_messages_total", "Messages ever stored in a stream (its last sequence): webhook pushes, dispatched targets, device reports, events, dead letters.", []string{"stream"}, nil)

	descAutoPaused   = prometheus.NewDesc("fleetshift_rollouts_auto_paused", "Rollouts paused automatically (failure rate above the policy's limit) and not yet resumed.", nil, nil)
	descFailureRate  = prometheus.NewDesc("fleetshift_rollout_failure_rate", "Failure rate of each active rollout (failed / finished devices).", []string{"rollout_id", "image_name", "new_tag"}, nil)
	descRegistered   = prometheus.NewDesc("fleetshift_devices_registered", "Devices registered and not revoked.", nil, nil)
	descOnline       = prometheus.NewDesc("fleetshift_devices_online", "Registered devices online: seen within their missed-heartbeat limit and connected (devices.is_online).", nil, nil)
	descOutboxRows   = prometheus.NewDesc("fleetshift_outbox_backlog", "Outbox rows (messages or bundles of messages) written and not yet published to JetStream.", nil, nil)
	descOutboxAge    = prometheus.NewDesc("fleetshift_outbox_oldest_age_seconds", "Age of the oldest outbox row not yet published (0 when empty).", nil, nil)
	descNotifyStatus = prometheus.NewDesc("fleetshift_notification_deliveries", "Webhook notification deliveries by status (pending, delivered, failed).", []string{"status"}, nil)
)

// ConsumerNotifier is the notifier's durable on the EVENTS stream (fleetshift/internal/notify).
const ConsumerNotifier = "notifier"

type stateCollector struct {
	pool *pgxpool.Pool
	js   jetstream.JetStream
	subj streams.Subjects
	log  zerolog.Logger
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRollouts, descDevices, descPending, descAckPend, descMsgs, descAutoPaused,
		descFailureRate, descRegistered, descOnline, descOutboxRows, descOutboxAge, descNotifyStatus} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.countBy(ctx, ch, descRollouts, `SELECT status, count(*) FROM image_rollouts GROUP BY status`)
	c.countBy(ctx, ch, descDevices, `SELECT d.status, count(*) FROM device_rollout_status d
		JOIN image_rollouts r ON r.rollout_id = d.rollout_id
		WHERE r.status IN ('pending','scheduled','in_progress','paused','awaiting_approval') GROUP BY d.status`)
	c.gauges(ctx, ch, `SELECT
			(SELECT count(*) FROM image_rollouts WHERE status = 'paused' AND auto_paused),
			(SELECT count(*) FROM devices WHERE revoked_at IS NULL),
			(SELECT count(*) FROM devices WHERE revoked_at IS NULL AND is_online),
			(SELECT count(*) FROM outbox),
			coalesce((SELECT extract(epoch FROM now() - min(created_at)) FROM outbox), 0)`,
		nil, descAutoPaused, descRegistered, descOnline, descOutboxRows, descOutboxAge)
	c.failureRates(ctx, ch)
	c.notificationStatuses(ctx, ch)
	if c.js == nil {
		return
	}
	for _, pair := range [][2]string{
		{c.subj.PushesStream(), streams.ConsumerPlanner},
		{c.subj.CommandsStream(), streams.ConsumerDispatcher},
		{c.subj.ReportsStream(), streams.ConsumerHealthwatch},
		{c.subj.EventsStream(), ConsumerNotifier},
	} {
		cons, err := c.js.Consumer(ctx, pair[0], pair[1])
		if err != nil {
			continue
		}
		info, err := cons.Info(ctx)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(info.NumPending), pair[0], pair[1])
		ch <- prometheus.MustNewConstMetric(descAckPend, prometheus.GaugeValue, float64(info.NumAckPending), pair[0], pair[1])
	}
	for _, name := range []string{c.subj.PushesStream(), c.subj.TargetsStream(), c.subj.ReportsStream(), c.subj.EventsStream(),
		c.subj.DeadLetterStream()} {
		s, err := c.js.Stream(ctx, name)
		if err != nil {
			continue
		}
		info, err := s.Info(ctx)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descMsgs, prometheus.CounterValue, float64(info.State.LastSeq), name)
	}
}

func (c *stateCollector) countBy(ctx context.Context, ch chan<- prometheus.Metric, d *prometheus.Desc, q string) {
	rows, err := c.pool.Query(ctx, q)
	if err != nil {
		c.log.Warn().Err(err).Msg("metrics: query failed")
		return
	}
	defer rows.Close()
	for rows.Next() {
		var status string
		var n int64
		if err := rows.Scan(&status, &n); err != nil {
			return
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(n), status)
	}
}

// gauges reads one row of numbers and emits each as the label-less gauge of the same position.
func (c *stateCollector) gauges(ctx context.Context, ch chan<- prometheus.Metric, q string, args []any, ds ...*prometheus.Desc) {
	vals := make([]float64, len(ds))
	ptrs := make([]any, len(ds))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := c.pool.QueryRow(ctx, q, args...).Scan(ptrs...); err != nil {
		c.log.Warn().Err(err).Msg("metrics: query failed")
		return
	}
	for i, d := range ds {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, vals[i])
	}
}

// failureRates emits the failure rate of every active rollout (few at a time, so the label set stays small).
func (c *stateCollector) failureRates(ctx context.Context, ch chan<- prometheus.Metric) {
	rows, err := c.pool.Query(ctx, `SELECT rollout_id::text, image_name, new_tag, failure_rate FROM image_rollouts
		WHERE status IN ('pending','scheduled','in_progress','paused','awaiting_approval')`)
	if err != nil {
		c.log.Warn().Err(err).Msg("metrics: query failed")
		return
	}
	defer rows.Close()
	for rows.Next() {
		var id, image, tag string
		var rate float64
		if err := rows.Scan(&id, &image, &tag, &rate); err != nil {
			return
		}
		ch <- prometheus.MustNewConstMetric(descFailureRate, prometheus.GaugeValue, rate, id, image, tag)
	}
}

// notificationStatuses emits deliveries by status, every status present (0 when none).
func (c *stateCollector) notificationStatuses(ctx context.Context, ch chan<- prometheus.Metric) {
	counts := map[string]float64{"pending": 0, "delivered": 0, "failed": 0}
	rows, err := c.pool.Query(ctx, `SELECT status, count(*) FROM notification_deliveries GROUP BY status`)
	if err != nil {
		c.log.Warn().Err(err).Msg("metrics: query failed")
		return
	}
	defer rows.Close()
	for rows.Next() {
		var status string
		var n int64
		if err := rows.Scan(&status, &n); err != nil {
			return
		}
		counts[status] = float64(n)
	}
	for status, n := range counts {
		ch <- prometheus.MustNewConstMetric(descNotifyStatus, prometheus.GaugeValue, n, status)
	}
}
