package cli

import (
	"fmt"
	"net/url"

	"github.com/spf13/cobra"
)

func notificationsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "notifications", Short: "Outgoing webhooks for rollout events (paused, failed, completed, rolled_back)"}
	var name, target, format string
	var kinds []string
	create := &cobra.Command{
		Use:   "create",
		Short: "Subscribe a URL to rollout events; prints the signing secret once",
		Long: "Subscribe a URL to rollout events. Every notification is a POST with a JSON body (or, with\n" +
			"--format slack, a Slack-compatible {\"text\": ...}) and the header X-Fleetshift-Signature-256:\n" +
			"sha256=<hex HMAC-SHA256 of the raw body keyed by the secret>. The secret is shown only now.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if name == "" || target == "" {
				return fmt.Errorf("--name and --url are required")
			}
			body := map[string]any{"name": name, "url": target, "format": format}
			if len(kinds) > 0 {
				body["event_types"] = kinds
			}
			var obj map[string]any
			if err := c.Do(cmd.Context(), "POST", "/api/v1/notifications", body, &obj); err != nil {
				return err
			}
			if g.output != FormatTable {
				return render(g.out, g.output, obj, nil, nil)
			}
			rows := [][]string{}
			for _, k := range []string{"id", "name", "url", "format", "event_types", "secret"} {
				rows = append(rows, []string{k, str(obj[k])})
			}
			if s, ok := obj["secret"].(string); ok {
				rows[len(rows)-1][1] = s + "   (shown only now)"
			}
			return render(g.out, FormatTable, nil, []string{"FIELD", "VALUE"}, rows)
		},
	}
	create.Flags().StringVar(&name, "name", "", "a name for the subscription (required)")
	create.Flags().StringVar(&target, "url", "", "where to POST notifications (required)")
	create.Flags().StringVar(&format, "format", "json", "json or slack")
	create.Flags().StringSliceVar(&kinds, "events", nil, "event kinds, comma-separated: paused, failed, completed, rolled_back (default: all)")
	cmd.AddCommand(create)
	cmd.AddCommand(listCmd(g, "list", "List subscriptions with delivery counts", "/api/v1/notifications",
		[]string{"id", "name", "url", "format", "event_types", "pending", "delivered", "failed"}, nil))
	cmd.AddCommand(postCmd(g, "delete ID", "Delete a subscription and its deliveries", "DELETE", cobra.ExactArgs(1),
		func(a []string) string { return "/api/v1/notifications/" + url.PathEscape(a[0]) }, nil))
	var status string
	var limit int
	deliveries := &cobra.Command{
		Use:   "deliveries ID",
		Short: "A subscription's deliveries, newest first: attempts, last status, last error",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			if status != "" {
				q.Set("status", status)
			}
			if limit > 0 {
				q.Set("limit", fmt.Sprint(limit))
			}
			path := "/api/v1/notifications/" + url.PathEscape(a[0]) + "/deliveries"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var doc map[string]any
			if err := c.Do(cmd.Context(), "GET", path, nil, &doc); err != nil {
				return err
			}
			list, _ := doc["deliveries"].([]any)
			cols := []string{"id", "event_type", "rollout_id", "status", "attempts", "last_status_code", "last_error", "last_attempt_at", "next_attempt_at"}
			rows := make([][]string, 0, len(list))
			for _, it := range list {
				m, _ := it.(map[string]any)
				row := make([]string, len(cols))
				for i, col := range cols {
					row[i] = str(m[col])
				}
				rows = append(rows, row)
			}
			return render(g.out, g.output, doc, upper(cols), rows)
		},
	}
	deliveries.Flags().StringVar(&status, "status", "", "only pending, delivered or failed")
	deliveries.Flags().IntVar(&limit, "limit", 0, "at most this many (default 100, at most 500)")
	cmd.AddCommand(deliveries)
	return cmd
}
