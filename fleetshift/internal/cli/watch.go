package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// terminalStatuses end a watch.
var terminalStatuses = map[string]bool{"completed": true, "failed": true, "cancelled": true, "rolled_back": true, "superseded": true}

func watchCmd(g *globals) *cobra.Command {
	var interval time.Duration
	var plain bool
	cmd := &cobra.Command{
		Use:   "watch ROLLOUT_ID",
		Short: "Follow a rollout until it ends: live per-batch bars on a terminal, progress lines otherwise",
		Long: "Follow a rollout until it ends. On a terminal it draws a progress bar per batch; otherwise (or with\n" +
			"--plain) it prints a line whenever the rollout changes. Exits 0 when the rollout completes and 1 when it\n" +
			"ends any other way (failed, cancelled, rolled back, superseded).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			tty := !plain && isTerminal(g.out)
			return watch(cmd.Context(), c, args[0], interval, g.out, tty)
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "how often to refresh")
	cmd.Flags().BoolVar(&plain, "plain", false, "print progress lines even on a terminal")
	return cmd
}

type rolloutView struct {
	ID           string  `json:"rollout_id"`
	ImageName    string  `json:"image_name"`
	OldTag       string  `json:"old_tag"`
	NewTag       string  `json:"new_tag"`
	Status       string  `json:"status"`
	CurrentBatch int     `json:"current_batch"`
	BatchSizes   []int   `json:"batch_sizes"`
	Total        int     `json:"total_devices"`
	Updated      int     `json:"updated_devices"`
	Failed       int     `json:"failed_devices"`
	RolledBack   int     `json:"rolled_back_devices"`
	FailureRate  float64 `json:"failure_rate"`
	AutoPaused   bool    `json:"auto_paused"`
}

func watch(ctx context.Context, c *Client, id string, interval time.Duration, w io.Writer, tty bool) error {
	last := ""
	drawn := 0
	for {
		var r rolloutView
		if err := c.Do(ctx, "GET", "/api/v1/rollouts/"+url.PathEscape(id), nil, &r); err != nil {
			return err
		}
		if tty {
			if drawn > 0 {
				fmt.Fprintf(w, "\x1b[%dA\x1b[J", drawn)
			}
			lines := bars(r)
			fmt.Fprint(w, strings.Join(lines, "\n")+"\n")
			drawn = len(lines)
		} else if line := progressLine(r); line != last {
			fmt.Fprintln(w, line)
			last = line
		}
		if terminalStatuses[r.Status] {
			if r.Status != "completed" {
				return fmt.Errorf("rollout %s ended %s", id, r.Status)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

func progressLine(r rolloutView) string {
	return fmt.Sprintf("%s %s %s -> %s status=%s batch=%d/%d updated=%d failed=%d rolled_back=%d total=%d failure_rate=%.2f",
		time.Now().UTC().Format(time.TimeOnly), r.ImageName, r.OldTag, r.NewTag, r.Status, r.CurrentBatch, len(r.BatchSizes),
		r.Updated, r.Failed, r.RolledBack, r.Total, r.FailureRate)
}

// bars draws one line per batch. Devices finish batch by batch, so the finished count fills batches in order.
func bars(r rolloutView) []string {
	status := r.Status
	if r.AutoPaused {
		status += " (auto-paused)"
	}
	lines := []string{fmt.Sprintf("%s  %s -> %s  %s  updated %d  failed %d  rolled back %d  of %d",
		r.ImageName, r.OldTag, r.NewTag, status, r.Updated, r.Failed, r.RolledBack, r.Total)}
	finished := r.Updated + r.Failed + r.RolledBack
	const width = 40
	for i, size := range r.BatchSizes {
		done := min(max(finished, 0), size)
		finished -= size
		if i+1 > r.CurrentBatch {
			done = 0
		}
		fill := 0
		if size > 0 {
			fill = done * width / size
		}
		lines = append(lines, fmt.Sprintf("  batch %d  [%s%s] %d/%d", i+1, strings.Repeat("#", fill), strings.Repeat(".", width-fill), done, size))
	}
	return lines
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
