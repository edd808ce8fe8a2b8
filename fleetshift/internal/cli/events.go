package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/streams"
)

func eventsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "events", Short: "Read the rollout event stream"}
	var rollout, typ, natsURL, prefix string
	var since time.Duration
	var follow bool
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Replay events from JetStream, then follow new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if rollout != "" {
				if rollout, err = resolveRollout(cmd.Context(), c, rollout); err != nil {
					return err
				}
			}
			url := cmp.Or(natsURL, os.Getenv("FLEETSHIFT_NATS_URL"))
			if url == "" {
				var info struct {
					NATSURL string `json:"nats_url"`
				}
				if err := c.Do(cmd.Context(), "GET", "/api/v1/info", nil, &info); err != nil {
					return fmt.Errorf("find the NATS URL (or pass --nats): %w", err)
				}
				url = info.NATSURL
			}
			return tailEvents(cmd.Context(), g, url, c.Token, streams.New(prefix), rollout, typ, since, follow)
		},
	}
	tail.Flags().StringVar(&rollout, "rollout", "", "only this rollout's events (an id or a unique prefix)")
	tail.Flags().StringVar(&typ, "type", "", "only events of this type, e.g. image.rollout_paused")
	tail.Flags().DurationVar(&since, "since", 0, "replay from this long ago (default: everything kept)")
	tail.Flags().BoolVar(&follow, "follow", true, "keep following after the replay")
	tail.Flags().StringVar(&natsURL, "nats", "", "NATS URL (default $FLEETSHIFT_NATS_URL, else asked from the server)")
	tail.Flags().StringVar(&prefix, "subject-prefix", streams.DefaultPrefix, "NATS subject prefix")
	cmd.AddCommand(tail)
	return cmd
}

func tailEvents(ctx context.Context, g *globals, url, token string, subj streams.Subjects, rollout, typ string, since time.Duration, follow bool) error {
	nc, err := nats.Connect(url, nats.Token(token), nats.Name("fleetshift events tail"))
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{
		// Event types are two tokens ("image.rollout_created"), so "any type" is "*.*".
		FilterSubjects: []string{subj.Event(cmp.Or(typ, "*.*"), cmp.Or(rollout, "*"))},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if since > 0 {
		start := time.Now().Add(-since)
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &start
	}
	cons, err := js.OrderedConsumer(ctx, subj.EventsStream(), cfg)
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	for {
		fetchCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		msg, err := cons.Next(jetstream.FetchContext(fetchCtx))
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout) {
				if !follow {
					return nil
				}
				continue
			}
			return fmt.Errorf("read events: %w", err)
		}
		if err := printEvent(g, msg.Data()); err != nil {
			return err
		}
	}
}

func printEvent(g *globals, data []byte) error {
	var ev streams.EventV1
	if err := json.Unmarshal(data, &ev); err != nil {
		return nil // not an event of ours; skip
	}
	switch g.output {
	case FormatJSON:
		_, err := fmt.Fprintln(g.out, string(data))
		return err
	case FormatYAML:
		return render(g.out, FormatYAML, ev, nil, nil)
	default:
		_, err := fmt.Fprintf(g.out, "%s  %-28s %s %s %s\n", ev.Timestamp.Local().Format(time.TimeOnly), ev.Type,
			cmp.Or(ev.RolloutID, "-"), cmp.Or(ev.DeviceUUID, "-"), ev.Message)
		if err != nil {
			return err
		}
		switch ev.Type {
		case streams.EventBatchDevicesScheduled:
			return printEventDevices(g, ev.Data, "scheduled")
		case streams.EventDevicesDownloaded:
			return printEventDevices(g, ev.Data, "downloaded")
		}
		return nil
	}
}

// scheduledPerLine is how many device uuids one continuation line of a batch event shows.
const scheduledPerLine = 4

// printEventDevices lists the devices of an event naming many (image.batch_devices_scheduled,
// image.device_downloaded) under its line, indented, a few per line, so a tail still shows which
// devices moved.
func printEventDevices(g *globals, data []byte, what string) error {
	var d struct {
		Devices []string `json:"devices"`
	}
	if err := json.Unmarshal(data, &d); err != nil || len(d.Devices) == 0 {
		return nil // an event we cannot read further still had its line
	}
	for lo := 0; lo < len(d.Devices); lo += scheduledPerLine {
		line := strings.Join(d.Devices[lo:min(lo+scheduledPerLine, len(d.Devices))], " ")
		if _, err := fmt.Fprintf(g.out, "          %s: %s\n", what, line); err != nil {
			return err
		}
	}
	return nil
}
