package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// resolveRollout turns a rollout id or a unique prefix of one into the full id. A full id is used as
// given; a prefix is looked up in the rollout list. No match and several matches are one-line errors.
func resolveRollout(ctx context.Context, c *Client, arg string) (string, error) {
	p := strings.ToLower(strings.TrimSpace(arg))
	if p == "" || strings.Trim(p, "0123456789abcdef-") != "" {
		return "", fmt.Errorf("rollout id %q: want a rollout id or a prefix of one (hex digits and dashes)", arg)
	}
	if len(p) == 36 {
		return p, nil
	}
	var matches []string
	cursor := ""
	for {
		path := "/api/v1/rollouts?limit=500"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		var page struct {
			Rollouts []struct {
				ID string `json:"rollout_id"`
			} `json:"rollouts"`
			Next *string `json:"next_cursor"`
		}
		if err := c.Do(ctx, "GET", path, nil, &page); err != nil {
			return "", fmt.Errorf("look up rollout id prefix %q: %w", arg, err)
		}
		for _, r := range page.Rollouts {
			if strings.HasPrefix(r.ID, p) {
				matches = append(matches, r.ID)
			}
		}
		if page.Next == nil || *page.Next == "" || len(matches) > 3 {
			break
		}
		cursor = *page.Next
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("no rollout id starts with %q", arg)
	case 1:
		return matches[0], nil
	default:
		shown := matches[:min(len(matches), 3)]
		more := ""
		if len(matches) > 3 {
			more = ", ..."
		}
		return "", fmt.Errorf("rollout id prefix %q is ambiguous: it matches %s%s; give more characters", arg, strings.Join(shown, ", "), more)
	}
}

// rolloutShowCmd shows one rollout: its fields, then one row per batch with device counts.
func rolloutShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ROLLOUT_ID",
		Short: "Show one rollout and its batches",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			id, err := resolveRollout(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Do(cmd.Context(), "GET", "/api/v1/rollouts/"+url.PathEscape(id), nil, &raw); err != nil {
				return err
			}
			if g.output != FormatTable {
				return render(g.out, g.output, raw, nil, nil)
			}
			var obj map[string]any
			if err := json.Unmarshal(raw, &obj); err != nil {
				return fmt.Errorf("decode rollout %s: %w", id, err)
			}
			var doc rolloutDoc
			_ = json.Unmarshal(raw, &doc)
			var rows [][]string
			for _, k := range []string{"rollout_id", "image_name", "old_tag", "new_tag", "new_digest", "strategy", "status",
				"auto_paused", "current_batch", "total_devices", "updated_devices", "failed_devices", "rolled_back_devices",
				"downloaded_devices", "failure_rate", "progress_percent", "rate_per_minute", "rate_dispatched", "policy_id", "superseded_by",
				"next_batch_at", "created_at", "started_at", "completed_at", "paused_at"} {
				if obj["strategy"] != "rate" && (k == "rate_per_minute" || k == "rate_dispatched") {
					continue // the rate of a rate rollout only
				}
				if v, ok := obj[k]; ok {
					rows = append(rows, []string{k, str(v)})
				}
			}
			if err := render(g.out, FormatTable, nil, []string{"FIELD", "VALUE"}, rows); err != nil {
				return err
			}
			fmt.Fprintln(g.out)
			var brows [][]string
			for _, b := range stateOf(doc).Batches {
				brows = append(brows, []string{strconv.Itoa(b.Batch), strconv.Itoa(b.Devices), strconv.Itoa(b.Completed),
					strconv.Itoa(b.Failed), strconv.Itoa(b.RolledBack), strconv.Itoa(b.InProgress), strconv.Itoa(b.Pending), strconv.Itoa(b.Skipped)})
			}
			return render(g.out, FormatTable, nil, []string{"BATCH", "DEVICES", "COMPLETED", "FAILED", "ROLLED_BACK", "IN_PROGRESS", "PENDING", "SKIPPED"}, brows)
		},
	}
}

// planCmd is the dry run; its table is a summary (policy, batches, exclusions by reason), never the
// device lists, which -o json gives.
func planCmd(g *globals) *cobra.Command {
	var digest string
	cmd := &cobra.Command{
		Use:   "plan IMAGE",
		Short: "Dry run: which policy and devices a push of IMAGE (repo:tag) would roll out to",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			body := map[string]any{"image": args[0]}
			if digest != "" {
				body["digest"] = digest
			}
			var raw json.RawMessage
			if err := c.Do(cmd.Context(), "POST", "/api/v1/rollouts/preview", body, &raw); err != nil {
				return err
			}
			if g.output != FormatTable {
				return render(g.out, g.output, raw, nil, nil)
			}
			var p struct {
				Policy *struct {
					ID             int64  `json:"id"`
					ImagePattern   string `json:"image_pattern"`
					UpdateStrategy string `json:"update_strategy"`
				} `json:"policy"`
				Reason       string `json:"reason"`
				Image        string `json:"image"`
				Strategy     string `json:"strategy"`
				Status       string `json:"status"`
				TotalDevices int    `json:"total_devices"`
				Batches      []struct {
					Batch   int `json:"batch"`
					Size    int `json:"size"`
					Devices []struct {
						DeviceUUID string `json:"device_uuid"`
					} `json:"devices"`
				} `json:"batches"`
				Excluded []struct {
					Reason string `json:"reason"`
				} `json:"excluded"`
				Rate *struct {
					Base      int     `json:"base_per_minute"`
					Maximum   int     `json:"maximum_per_minute"`
					Factor    float64 `json:"increment_factor"`
					Criteria  string  `json:"increase_criteria"`
					Threshold int     `json:"increase_threshold"`
					MinTime   float64 `json:"min_dispatch_seconds"`
				} `json:"rate"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				return fmt.Errorf("decode plan: %w", err)
			}
			policy := "none"
			if p.Policy != nil {
				policy = fmt.Sprintf("#%d %s (%s)", p.Policy.ID, p.Policy.ImagePattern, p.Policy.UpdateStrategy)
			}
			rows := [][]string{{"image", p.Image}, {"policy", policy}}
			if p.Reason != "" {
				rows = append(rows, []string{"reason", str(p.Reason)})
			}
			rows = append(rows, []string{"strategy", dash(p.Strategy)}, []string{"first status", dash(p.Status)},
				[]string{"devices", strconv.Itoa(p.TotalDevices)}, []string{"excluded", strconv.Itoa(len(p.Excluded))})
			if r := p.Rate; r != nil {
				rows = append(rows, []string{"rate", fmt.Sprintf("%d/min, x%g per %d %s, at most %d/min", r.Base, r.Factor,
					r.Threshold, r.Criteria, r.Maximum)},
					[]string{"dispatch time", "at least " + time.Duration(r.MinTime*float64(time.Second)).Round(time.Second).String()})
			}
			if err := render(g.out, FormatTable, nil, []string{"FIELD", "VALUE"}, rows); err != nil {
				return err
			}
			if len(p.Batches) > 0 {
				fmt.Fprintln(g.out)
				var brows [][]string
				for _, b := range p.Batches {
					var first []string
					for _, d := range b.Devices[:min(3, len(b.Devices))] {
						first = append(first, d.DeviceUUID)
					}
					list := strings.Join(first, ", ")
					if len(b.Devices) > 3 {
						list += fmt.Sprintf(" (+%d)", len(b.Devices)-3)
					}
					brows = append(brows, []string{strconv.Itoa(b.Batch), strconv.Itoa(b.Size), cut(list, maxCell)})
				}
				if err := render(g.out, FormatTable, nil, []string{"BATCH", "DEVICES", "FIRST DEVICES"}, brows); err != nil {
					return err
				}
			}
			if len(p.Excluded) > 0 {
				fmt.Fprintln(g.out)
				by := map[string]int{}
				for _, e := range p.Excluded {
					by[e.Reason]++
				}
				reasons := make([]string, 0, len(by))
				for r := range by {
					reasons = append(reasons, r)
				}
				sort.Strings(reasons)
				var erows [][]string
				for _, r := range reasons {
					erows = append(erows, []string{str(r), strconv.Itoa(by[r])})
				}
				return render(g.out, FormatTable, nil, []string{"EXCLUDED BECAUSE", "DEVICES"}, erows)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&digest, "digest", "", "the pushed digest (sha256:...)")
	return cmd
}

// pagedList reads every page of a list endpoint (field key), up to limit items (0: all).
func pagedList(ctx context.Context, c *Client, path string, q url.Values, key string, limit int) ([]map[string]any, error) {
	var all []map[string]any
	for {
		page := url.Values{}
		for k, v := range q {
			page[k] = v
		}
		page.Set("limit", "500")
		var doc map[string]json.RawMessage
		if err := c.Do(ctx, "GET", path+"?"+page.Encode(), nil, &doc); err != nil {
			return nil, err
		}
		var items []map[string]any
		if err := json.Unmarshal(doc[key], &items); err != nil {
			return nil, fmt.Errorf("GET %s: decode %s: %w", path, key, err)
		}
		all = append(all, items...)
		if limit > 0 && len(all) >= limit {
			return all[:limit], nil
		}
		var next *string
		_ = json.Unmarshal(doc["next_cursor"], &next)
		if next == nil || *next == "" {
			return all, nil
		}
		q = cloneWith(q, "cursor", *next)
	}
}

func cloneWith(q url.Values, k, v string) url.Values {
	out := url.Values{}
	for kk, vv := range q {
		out[kk] = vv
	}
	out.Set(k, v)
	return out
}

// rolloutSubListCmd lists a rollout's devices or events, every page.
func rolloutSubListCmd(g *globals, use, short, sub string, cols []string, header []string, flags func(*cobra.Command, url.Values)) *cobra.Command {
	q := url.Values{}
	var limit int
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			id, err := resolveRollout(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			list, err := pagedList(cmd.Context(), c, "/api/v1/rollouts/"+url.PathEscape(id)+"/"+sub, q, sub, limit)
			if err != nil {
				return err
			}
			if list == nil {
				list = []map[string]any{}
			}
			rows := make([][]string, 0, len(list))
			for _, it := range list {
				row := make([]string, len(cols))
				for i, col := range cols {
					v := it[col]
					if col == "failure_reason" {
						v = reason(it)
					}
					row[i] = str(v)
				}
				rows = append(rows, row)
			}
			return render(g.out, g.output, map[string]any{"rollout_id": id, sub: list}, header, rows)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many (default: all)")
	if flags != nil {
		flags(cmd, q)
	}
	return cmd
}

// reason is why a rollout's device is where it is: its failure reason; else the message a skipped or
// rolled-back device carries; else, while a download ahead keeps failing (the device tries again), why.
func reason(dev map[string]any) any {
	for _, k := range []string{"failure_reason", "error_message"} {
		if s, _ := dev[k].(string); s != "" {
			return s
		}
	}
	if s, _ := dev["download_error"].(string); s != "" && dev["downloaded_at"] == nil {
		return "download failed: " + s
	}
	return nil
}

func rolloutDevicesCmd(g *globals) *cobra.Command {
	return rolloutSubListCmd(g, "devices ROLLOUT_ID", "List a rollout's devices, e.g. --status failed", "devices",
		[]string{"batch_number", "device_uuid", "device_name", "status", "old_image_tag", "new_image_tag", "retry_count", "downloaded_at", "failure_reason", "updated_at"},
		[]string{"BATCH", "DEVICE", "NAME", "STATUS", "OLD", "NEW", "RETRIES", "DOWNLOADED", "REASON", "UPDATED"},
		func(c *cobra.Command, q url.Values) {
			queryFlag(c, q, "status", "only devices in these statuses (comma-separated: pending, scheduled, updating, health_checking, completed, failed, rolled_back, skipped)")
		})
}

func rolloutEventsCmd(g *globals) *cobra.Command {
	return rolloutSubListCmd(g, "events ROLLOUT_ID", "List a rollout's recorded events, oldest first", "events",
		[]string{"timestamp", "event_type", "device_uuid", "actor", "message"},
		[]string{"TIME", "TYPE", "DEVICE", "ACTOR", "MESSAGE"},
		func(c *cobra.Command, q url.Values) {
			queryFlag(c, q, "type", "only events of this type, e.g. image.device_failed")
		})
}

// setTargetCmd writes a device's target state from a file, or a one-service target from --image.
func setTargetCmd(g *globals) *cobra.Command {
	var file, image, app, service string
	cmd := postCmd(g, "set-target UUID", "Set a device's target state: -f target.json (apps, config) or --image for one service", "PUT", cobra.ExactArgs(1),
		func(a []string) string { return "/api/v1/devices/" + url.PathEscape(a[0]) + "/target-state" },
		func([]string) (any, error) {
			switch {
			case file != "" && image != "":
				return nil, fmt.Errorf("give either -f or --image, not both")
			case file != "":
				b, err := readFileOrStdin(file)
				if err != nil {
					return nil, err
				}
				var body map[string]any
				if err := yamlOrJSON(b, &body); err != nil {
					return nil, fmt.Errorf("%s: %w", file, err)
				}
				return body, nil
			case image != "":
				svc := map[string]any{"serviceId": 1, "serviceName": service, "imageName": image, "config": map[string]any{"image": image}}
				return map[string]any{"apps": map[string]any{"1": map[string]any{"appId": 1, "appName": app, "services": []any{svc}}}}, nil
			}
			return nil, fmt.Errorf("nothing to send: give -f target.json or --image")
		})
	cmd.Flags().StringVarP(&file, "file", "f", "", "target state as JSON or YAML ({apps, config}; - for stdin)")
	cmd.Flags().StringVar(&image, "image", "", "run this image as the device's only service")
	cmd.Flags().StringVar(&app, "app-name", "app", "app name with --image")
	cmd.Flags().StringVar(&service, "service-name", "main", "service name with --image")
	return cmd
}

// currentStateCmd shows what a device last reported: one row per service.
func currentStateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "current UUID",
		Short: "Show a device's reported state: one row per service",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Do(cmd.Context(), "GET", "/api/v1/devices/"+url.PathEscape(args[0])+"/current-state", nil, &raw); err != nil {
				return err
			}
			if g.output != FormatTable {
				return render(g.out, g.output, raw, nil, nil)
			}
			var st struct {
				UUID       string  `json:"uuid"`
				IsOnline   bool    `json:"is_online"`
				LastSeenAt *string `json:"last_seen_at"`
				ReportedAt *string `json:"reported_at"`
				Apps       map[string]struct {
					AppName  string `json:"appName"`
					Services []struct {
						ServiceName string `json:"serviceName"`
						ImageName   string `json:"imageName"`
						Status      string `json:"status"`
						Error       string `json:"error"`
						Health      *struct {
							Status string `json:"status"`
						} `json:"health"`
					} `json:"services"`
				} `json:"apps"`
			}
			if err := json.Unmarshal(raw, &st); err != nil {
				return fmt.Errorf("decode current state of %s: %w", args[0], err)
			}
			fmt.Fprintf(g.out, "device %s  online %t  last seen %s  reported %s\n", st.UUID, st.IsOnline, strOrDash(st.LastSeenAt), strOrDash(st.ReportedAt))
			ids := make([]string, 0, len(st.Apps))
			for id := range st.Apps {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			var rows [][]string
			for _, id := range ids {
				a := st.Apps[id]
				for _, s := range a.Services {
					health := "-"
					if s.Health != nil {
						health = dash(s.Health.Status)
					}
					rows = append(rows, []string{dash(a.AppName), dash(s.ServiceName), str(s.ImageName), dash(s.Status), health, str(s.Error)})
				}
			}
			return render(g.out, FormatTable, nil, []string{"APP", "SERVICE", "IMAGE", "STATUS", "HEALTH", "ERROR"}, rows)
		},
	}
}

func strOrDash(s *string) string {
	if s == nil {
		return "-"
	}
	return dash(*s)
}

// rolloutDeviceCmd shows one device of a rollout: its row, then the failed container's log tail.
func rolloutDeviceCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "device ROLLOUT_ID DEVICE_UUID",
		Short: "Show one device of a rollout: status, why it failed and the last lines of its failed container's log",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			id, err := resolveRollout(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			var obj map[string]any
			if err := c.Do(cmd.Context(), "GET", "/api/v1/rollouts/"+url.PathEscape(id)+"/devices/"+url.PathEscape(args[1]), nil, &obj); err != nil {
				return err
			}
			if g.output != FormatTable {
				return renderObject(g, obj)
			}
			logTail, _ := obj["failure_log"].(string)
			delete(obj, "failure_log")
			if err := renderObject(g, obj); err != nil {
				return err
			}
			if logTail != "" {
				fmt.Fprintf(g.out, "\nlast log lines of the failed container:\n%s\n", logTail)
			}
			return nil
		},
	}
}

// rolloutRetryCmd re-dispatches a rollout's failed devices: all, or those named.
func rolloutRetryCmd(g *globals) *cobra.Command {
	return rolloutPostCmd(g, "retry ROLLOUT_ID [DEVICE_UUID...]", "Re-dispatch a rollout's failed devices (all, or those named)", "POST", cobra.MinimumNArgs(1),
		func(a []string) string { return "/api/v1/rollouts/" + url.PathEscape(a[0]) + "/retry" },
		func(a []string) (any, error) {
			if len(a) == 1 {
				return nil, nil
			}
			return map[string]any{"device_uuids": a[1:]}, nil
		})
}
