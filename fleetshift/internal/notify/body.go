package notify

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/fleetshift/fleetshift/streams"
)

// rolloutSummary is the rollout as it stood when the event was handed to the notifier.
type rolloutSummary struct {
	ID          string  `json:"rollout_id"`
	Image       string  `json:"image_name"`
	OldTag      string  `json:"old_tag"`
	NewTag      string  `json:"new_tag"`
	Status      string  `json:"status"`
	Devices     int     `json:"total_devices"`
	Updated     int     `json:"updated_devices"`
	Failed      int     `json:"failed_devices"`
	RolledBack  int     `json:"rolled_back_devices"`
	FailureRate float64 `json:"failure_rate"`
	AutoPaused  bool    `json:"auto_paused"`
}

// jsonBody is the generic notification: the event, its kind, and the rollout's summary.
func jsonBody(ev streams.EventV1, kind string, r *rolloutSummary) ([]byte, error) {
	b, err := json.Marshal(struct {
		ID        string          `json:"id"`
		Kind      string          `json:"kind"`
		Type      string          `json:"type"`
		RolloutID string          `json:"rollout_id,omitempty"`
		Message   string          `json:"message,omitempty"`
		Actor     string          `json:"actor,omitempty"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data,omitempty"`
		Rollout   *rolloutSummary `json:"rollout,omitempty"`
	}{ev.ID, kind, ev.Type, ev.RolloutID, ev.Message, ev.Actor, ev.Timestamp, ev.Data, r})
	if err != nil {
		return nil, fmt.Errorf("encode notification for event %s: %w", ev.ID, err)
	}
	return b, nil
}

// slackBody is a Slack-compatible incoming-webhook body: {"text": "..."}.
func slackBody(ev streams.EventV1, kind string, r *rolloutSummary) ([]byte, error) {
	b, err := json.Marshal(map[string]string{"text": slackText(ev, kind, r)})
	if err != nil {
		return nil, fmt.Errorf("encode slack notification for event %s: %w", ev.ID, err)
	}
	return b, nil
}

func slackText(ev streams.EventV1, kind string, r *rolloutSummary) string {
	var b strings.Builder
	b.WriteString("fleetshift: rollout ")
	if r != nil {
		old := r.OldTag
		if old == "" {
			old = "-"
		}
		fmt.Fprintf(&b, "%s %s -> %s ", r.Image, old, r.NewTag)
	}
	b.WriteString(strings.ReplaceAll(kind, "_", " "))
	if r != nil {
		if r.AutoPaused && kind == "paused" {
			b.WriteString(" automatically")
		}
		fmt.Fprintf(&b, " (%d/%d updated, %d failed, %d rolled back, failure rate %.2f)",
			r.Updated, r.Devices, r.Failed, r.RolledBack, r.FailureRate)
	}
	if ev.Message != "" {
		b.WriteString(": " + ev.Message)
	}
	if ev.RolloutID != "" {
		b.WriteString(" [rollout " + ev.RolloutID + "]")
	}
	return b.String()
}
