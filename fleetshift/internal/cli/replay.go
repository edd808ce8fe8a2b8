package cli

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// policyReplayCmd is the dry run of a policy over past pushes: --id replays a stored policy as it
// stands, -f a new or changed one (with the id of a stored policy it replaces that one). The table
// lists each rollout the policy would have created with its batch sizes; -o json gives the devices.
func policyReplayCmd(g *globals) *cobra.Command {
	var (
		id   string
		file string
		days int
	)
	cmd := &cobra.Command{
		Use:   "replay (--id ID | -f policy.yaml) [--days N]",
		Short: "Dry run: the rollouts a policy would have created for the pushes of the last N days",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (id == "") == (file == "") {
				return fmt.Errorf("give exactly one of --id ID or -f policy.yaml")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			body := map[string]any{"days": days}
			path := "/api/v1/image-policies/replay"
			if id != "" {
				path = "/api/v1/image-policies/" + url.PathEscape(id) + "/replay"
			} else {
				b, err := readFileOrStdin(file)
				if err != nil {
					return err
				}
				pol := map[string]any{}
				if err := yaml.Unmarshal(b, &pol); err != nil {
					return fmt.Errorf("%s: %w", file, err)
				}
				body["policy"] = pol
			}
			var raw json.RawMessage
			if err := c.Do(cmd.Context(), "POST", path, body, &raw); err != nil {
				return err
			}
			if g.output != FormatTable {
				return render(g.out, g.output, raw, nil, nil)
			}
			var r struct {
				Pushes    int  `json:"pushes"`
				Truncated bool `json:"truncated"`
				Rollouts  []struct {
					PushedAt        string  `json:"pushed_at"`
					Image           string  `json:"image"`
					Status          string  `json:"status"`
					TotalDevices    int     `json:"total_devices"`
					BatchSizes      []int   `json:"batch_sizes"`
					ActualRolloutID *string `json:"actual_rollout_id"`
				} `json:"rollouts"`
				Skipped []struct {
					Reason string `json:"reason"`
				} `json:"skipped"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("decode replay: %w", err)
			}
			pushes := strconv.Itoa(r.Pushes)
			if r.Truncated {
				pushes += " (most recent only)"
			}
			summary := [][]string{{"days", strconv.Itoa(days)}, {"pushes replayed", pushes},
				{"rollouts", strconv.Itoa(len(r.Rollouts))}, {"skipped", strconv.Itoa(len(r.Skipped))}}
			if err := render(g.out, FormatTable, nil, []string{"FIELD", "VALUE"}, summary); err != nil {
				return err
			}
			if len(r.Rollouts) > 0 {
				fmt.Fprintln(g.out)
				var rows [][]string
				for _, ro := range r.Rollouts {
					sizes := make([]string, len(ro.BatchSizes))
					for i, s := range ro.BatchSizes {
						sizes[i] = strconv.Itoa(s)
					}
					actual := "-"
					if ro.ActualRolloutID != nil {
						actual = (*ro.ActualRolloutID)[:min(8, len(*ro.ActualRolloutID))]
					}
					rows = append(rows, []string{ro.PushedAt, cut(ro.Image, maxCell), ro.Status,
						strconv.Itoa(ro.TotalDevices), strings.Join(sizes, ","), actual})
				}
				if err := render(g.out, FormatTable, nil, []string{"PUSHED", "IMAGE", "STATUS", "DEVICES", "BATCHES", "ACTUAL ROLLOUT"}, rows); err != nil {
					return err
				}
			}
			if len(r.Skipped) > 0 {
				fmt.Fprintln(g.out)
				by := map[string]int{}
				var reasons []string
				for _, s := range r.Skipped {
					if by[s.Reason] == 0 {
						reasons = append(reasons, s.Reason)
					}
					by[s.Reason]++
				}
				var rows [][]string
				for _, reason := range reasons {
					rows = append(rows, []string{reason, strconv.Itoa(by[reason])})
				}
				return render(g.out, FormatTable, nil, []string{"SKIPPED BECAUSE", "PUSHES"}, rows)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "replay the stored policy ID")
	cmd.Flags().StringVarP(&file, "file", "f", "", "replay this policy (YAML or JSON, - for stdin); with an id it replaces that policy")
	cmd.Flags().IntVar(&days, "days", 7, "how many days of pushes to replay (1-30)")
	return cmd
}
