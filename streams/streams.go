// Package streams defines fleetshift's JetStream streams, consumers, subjects and typed messages: the
// contracts between the services of the pipeline.
//
// Streams (names carry the upper-cased subject prefix, FLEET_ by default):
//
//	PUSHES   <p>.pushes.v1                 normalised registry pushes, written by ingest, consumed by planner
//	COMMANDS <p>.commands.v1.<kind>.<id>   rollout commands (dispatch a batch, ...), written through the outbox
//	TARGETS  <p>.device.*.target           each device's latest target state (one message kept per subject)
//	REPORTS  <p>.device.*.state            device current-state reports, consumed by healthwatch
//	EVENTS   <p>.events.<type>.<rollout>   every rollout event, for operators to tail and replay
//	DEADLETTER <p>.deadletter.<stream>     messages a consumer terminated because they can never succeed
package streams

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultPrefix is the subject prefix used when none is configured.
const DefaultPrefix = "fleet"

// Consumer durable names, shared by every replica of a service.
const (
	ConsumerPlanner     = "planner"
	ConsumerDispatcher  = "dispatcher"
	ConsumerHealthwatch = "healthwatch"
)

// MaxDeliver is how often a message may be delivered to a consumer: a message that still fails on its
// MaxDeliver-th delivery, or arrives for a later one (its handler kept dying), is dead-lettered. The
// consumers enforce it (shared/consume), not JetStream, so that no message is ever dropped unrecorded.
const MaxDeliver = 20

// Headers of a dead-lettered message (its payload is the original message's).
const (
	HeaderDLSubject  = "Fleet-Original-Subject" // the subject the message was published to
	HeaderDLStream   = "Fleet-Original-Stream"  // the stream it was stored in
	HeaderDLSeq      = "Fleet-Stream-Seq"       // its sequence in that stream
	HeaderDLConsumer = "Fleet-Consumer"         // the durable that gave up on it
	HeaderDLReason   = "Fleet-Reason"           // short class: decode, invalid, data, max_deliver
	HeaderDLError    = "Fleet-Error"            // the error, as text
	HeaderDLDelivery = "Fleet-Delivered"        // how often it had been delivered
)

// Subjects builds every subject and stream name from one prefix. The zero value is not usable; use New.
type Subjects struct {
	Prefix string
}

// New returns the subjects for prefix (DefaultPrefix when empty). The prefix must be a plain NATS
// token sequence without wildcards.
func New(prefix string) Subjects {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Subjects{Prefix: prefix}
}

func (s Subjects) streamName(kind string) string {
	return strings.ToUpper(strings.ReplaceAll(s.Prefix, ".", "_")) + "_" + kind
}

// Stream names.
func (s Subjects) PushesStream() string   { return s.streamName("PUSHES") }
func (s Subjects) CommandsStream() string { return s.streamName("COMMANDS") }
func (s Subjects) TargetsStream() string  { return s.streamName("TARGETS") }
func (s Subjects) ReportsStream() string  { return s.streamName("REPORTS") }
func (s Subjects) EventsStream() string   { return s.streamName("EVENTS") }
func (s Subjects) DeadLetterStream() string {
	return s.streamName("DEADLETTER")
}

// DeadLetter is the subject a message of stream is dead-lettered to.
func (s Subjects) DeadLetter(stream string) string { return s.Prefix + ".deadletter." + stream }

// DeadLetterAll matches every dead-lettered message.
func (s Subjects) DeadLetterAll() string { return s.Prefix + ".deadletter.>" }

// Push is the subject of normalised registry pushes.
func (s Subjects) Push() string { return s.Prefix + ".pushes.v1" }

// Command is the subject of a rollout command of kind for rollout id.
func (s Subjects) Command(kind, rolloutID string) string {
	return s.Prefix + ".commands.v1." + kind + "." + rolloutID
}

// CommandsAll matches every command.
func (s Subjects) CommandsAll() string { return s.Prefix + ".commands.v1.>" }

// DeviceTarget is the subject a device subscribes to for its target state.
func (s Subjects) DeviceTarget(uuid string) string { return s.Prefix + ".device." + uuid + ".target" }

// DeviceState is the subject a device publishes its current state to.
func (s Subjects) DeviceState(uuid string) string { return s.Prefix + ".device." + uuid + ".state" }

// DeviceTargetAll matches every device's target subject.
func (s Subjects) DeviceTargetAll() string { return s.Prefix + ".device.*.target" }

// DeviceStateAll matches every device's state subject.
func (s Subjects) DeviceStateAll() string { return s.Prefix + ".device.*.state" }

// Event is the subject of an event of type eventType (e.g. image.rollout_created) for a rollout.
// An event without a rollout uses "none".
func (s Subjects) Event(eventType, rolloutID string) string {
	if rolloutID == "" {
		rolloutID = "none"
	}
	return s.Prefix + ".events." + eventType + "." + rolloutID
}

// EventsAll matches every event.
func (s Subjects) EventsAll() string { return s.Prefix + ".events.>" }

// Control is the request subject of a control verb for a rollout.
func (s Subjects) Control(rolloutID, verb string) string {
	return s.Prefix + ".control.rollout." + rolloutID + "." + verb
}

// DeviceRevoked is where a revoked device's uuid is announced (core NATS), so NATS access closes at once.
func (s Subjects) DeviceRevoked() string { return s.Prefix + ".internal.device.revoked" }

// ControlAll matches every control request.
func (s Subjects) ControlAll() string { return s.Prefix + ".control.>" }

// DeviceFromSubject returns the device uuid of a <p>.device.<uuid>.<kind> subject.
func (s Subjects) DeviceFromSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".device.")
	if !ok {
		return "", false
	}
	uuid, _, ok := strings.Cut(rest, ".")
	return uuid, ok && uuid != ""
}

// MaxReportBytes is the largest report message: the 64 KiB body the HTTP report route accepts in its
// {"<uuid>": ...} envelope. The REPORTS stream refuses larger messages, and devices' NATS connections
// may not publish more (the auth callout's payload limit), whatever the server's max_payload.
const MaxReportBytes = 64<<10 + 256

// Options tune stream storage; the zero value suits a single server.
type Options struct {
	// Replicas for every stream (1 on a single server, 3 on a cluster).
	Replicas int
	// Memory keeps streams in memory instead of on disk (tests).
	Memory bool
	// Wait is how long Ensure keeps asking a JetStream that does not answer yet (an embedded server
	// still recovering its store after a crash, a cluster without a meta leader); default 2m. Each
	// attempt waits at most Attempt (default 10s).
	Wait, Attempt time.Duration
}

// StreamConfigs returns the configuration of every stream.
func (s Subjects) StreamConfigs(o Options) []jetstream.StreamConfig {
	storage := jetstream.FileStorage
	if o.Memory {
		storage = jetstream.MemoryStorage
	}
	replicas := max(o.Replicas, 1)
	return []jetstream.StreamConfig{
		{
			Name:        s.PushesStream(),
			Description: "normalised registry pushes (ingest -> planner)",
			Subjects:    []string{s.Push()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      7 * 24 * time.Hour,
			// Registries redeliver for up to 24 hours (EventBridge); the dedupe id stays known that long.
			Duplicates: 24 * time.Hour,
			Storage:    storage,
			Replicas:   replicas,
		},
		{
			Name:        s.CommandsStream(),
			Description: "rollout commands (planner, healthwatch, control -> dispatcher)",
			Subjects:    []string{s.CommandsAll()},
			Retention:   jetstream.WorkQueuePolicy,
			Duplicates:  10 * time.Minute,
			Storage:     storage,
			Replicas:    replicas,
		},
		{
			Name:              s.TargetsStream(),
			Description:       "each device's latest target state",
			Subjects:          []string{s.DeviceTargetAll()},
			Retention:         jetstream.LimitsPolicy,
			MaxMsgsPerSubject: 1,
			AllowDirect:       true,
			Duplicates:        2 * time.Minute,
			Storage:           storage,
			Replicas:          replicas,
		},
		{
			Name:        s.ReportsStream(),
			Description: "device current-state reports (devices, stateapi -> healthwatch)",
			Subjects:    []string{s.DeviceStateAll()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      24 * time.Hour,
			Duplicates:  time.Minute,
			// healthwatch reads a device's last report (last by subject) before failing it by timeout.
			AllowDirect: true,
			MaxMsgSize:  MaxReportBytes,
			Storage:     storage,
			Replicas:    replicas,
		},
		{
			Name:        s.EventsStream(),
			Description: "rollout events for operators to tail and replay",
			Subjects:    []string{s.EventsAll()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      30 * 24 * time.Hour,
			Duplicates:  10 * time.Minute,
			Storage:     storage,
			Replicas:    replicas,
		},
		{
			Name:        s.DeadLetterStream(),
			Description: "messages consumers terminated, with the reason in headers",
			Subjects:    []string{s.DeadLetterAll()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      30 * 24 * time.Hour,
			// Msg id <stream>:<seq>: a message dead-lettered twice (crash before Term) is stored once.
			Duplicates: 10 * time.Minute,
			Storage:    storage,
			Replicas:   replicas,
		},
	}
}

// Ensure creates or updates every stream. It is idempotent and safe to call from every replica at start.
func (s Subjects) Ensure(ctx context.Context, js jetstream.JetStream, o Options) error {
	wait, attempt := cmp.Or(o.Wait, 2*time.Minute), cmp.Or(o.Attempt, 10*time.Second)
	for _, cfg := range s.StreamConfigs(o) {
		if err := ensureStream(ctx, js, cfg, wait, attempt); err != nil {
			return err
		}
	}
	return nil
}

// ensureStream creates or updates one stream. A JetStream that times out or says it is unavailable
// (503) is asked again with backoff for up to wait: after a kill -9 an embedded server answers its
// first requests only once it has recovered its store, which for large streams outlasts one request.
// Any other error is returned at once.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, wait, attempt time.Duration) error {
	deadline := time.Now().Add(wait)
	pause := 250 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		_, err := js.CreateOrUpdateStream(actx, cfg)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !unavailable(err) || time.Now().Add(pause).After(deadline) {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		case <-time.After(pause):
		}
		pause = min(pause*2, 5*time.Second)
	}
}

// unavailable tells whether a JetStream API error means "not now" rather than "no".
func unavailable(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		(errors.As(err, &apiErr) && apiErr.Code == 503)
}

// ConsumerConfig returns the shared durable consumer a service uses on a stream. Several replicas bind
// to the same durable and share its messages. JetStream redelivers without limit; the consumer
// dead-letters a message past MaxDeliver deliveries.
func ConsumerConfig(durable string, filter string, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       durable,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
		BackOff:       nil,
	}
}
