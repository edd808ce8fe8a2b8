package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// failedEnd reports whether status ends a watch with ExitRolloutFailed ("completed" ends it with 0).
func failedEnd(status string) bool {
	switch status {
	case "failed", "cancelled", "rolled_back", "superseded":
		return true
	}
	return false
}

func watchCmd(g *globals) *cobra.Command {
	var o watchOptions
	var plain bool
	cmd := &cobra.Command{
		Use:   "watch ROLLOUT_ID",
		Short: "Follow a rollout until it ends: live per-batch bars on a terminal, a line per change otherwise",
		Long: "Follow a rollout until it ends. On a terminal it draws one bar per batch (completed #, failed X,\n" +
			"rolled back R, in progress ~, pending .; coloured unless NO_COLOR is set) and redraws only on change;\n" +
			"otherwise (or with --plain) it prints a line per change; with -o json one JSON object per change.\n" +
			"Exit codes: 0 completed, 2 failed/rolled back/cancelled/superseded, 3 paused (unless --follow-paused),\n" +
			"4 server unreachable for --reconnect-timeout, 1 any other error.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			id, err := resolveRollout(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			o.format = g.output
			o.tty = !plain && g.output == FormatTable && isTerminal(g.out)
			o.color = o.tty && os.Getenv("NO_COLOR") == ""
			o.width = func() int { return termWidth(g.out) }
			return watch(cmd.Context(), c, id, o, g.out)
		},
	}
	cmd.Flags().DurationVar(&o.interval, "interval", time.Second, "how often to ask the server")
	cmd.Flags().DurationVar(&o.reconnect, "reconnect-timeout", 30*time.Second, "give up (exit 4) when the server is unreachable this long")
	cmd.Flags().BoolVar(&o.followPaused, "follow-paused", false, "keep watching a paused rollout instead of exiting 3")
	cmd.Flags().BoolVar(&plain, "plain", false, "print a line per change even on a terminal")
	return cmd
}

type watchOptions struct {
	interval, reconnect time.Duration
	followPaused        bool
	format              string
	tty, color          bool
	width               func() int
}

// rolloutDoc is what watch reads from GET /api/v1/rollouts/:id.
type rolloutDoc struct {
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
	Batches      []struct {
		Batch    int            `json:"batch"`
		Total    int            `json:"total"`
		Statuses map[string]int `json:"statuses"`
	} `json:"batches"`
}

// watchState is one observation of a rollout; -o json prints it (with the time) on every change.
type watchState struct {
	RolloutID    string       `json:"rollout_id"`
	Image        string       `json:"image"`
	OldTag       string       `json:"old_tag"`
	NewTag       string       `json:"new_tag"`
	Status       string       `json:"status"`
	AutoPaused   bool         `json:"auto_paused"`
	CurrentBatch int          `json:"current_batch"`
	TotalBatches int          `json:"total_batches"`
	Devices      int          `json:"total_devices"`
	Updated      int          `json:"updated_devices"`
	Failed       int          `json:"failed_devices"`
	RolledBack   int          `json:"rolled_back_devices"`
	FailureRate  float64      `json:"failure_rate"`
	Batches      []batchState `json:"batches"`
}

// batchState counts one batch's devices by what they are doing, from the devices' own statuses.
type batchState struct {
	Batch      int `json:"batch"`
	Devices    int `json:"devices"`
	Completed  int `json:"completed"`
	Failed     int `json:"failed"`
	RolledBack int `json:"rolled_back"`
	InProgress int `json:"in_progress"`
	Pending    int `json:"pending"`
	Skipped    int `json:"skipped"`
}

func stateOf(r rolloutDoc) watchState {
	s := watchState{RolloutID: r.ID, Image: r.ImageName, OldTag: r.OldTag, NewTag: r.NewTag, Status: r.Status,
		AutoPaused: r.AutoPaused, CurrentBatch: r.CurrentBatch, TotalBatches: len(r.BatchSizes), Devices: r.Total,
		Updated: r.Updated, Failed: r.Failed, RolledBack: r.RolledBack, FailureRate: r.FailureRate}
	byNumber := map[int]batchState{}
	for _, b := range r.Batches {
		bs := batchState{Batch: b.Batch, Devices: b.Total}
		for status, n := range b.Statuses {
			switch status {
			case "completed":
				bs.Completed += n
			case "failed":
				bs.Failed += n
			case "rolled_back":
				bs.RolledBack += n
			case "scheduled", "updating", "health_checking":
				bs.InProgress += n
			case "skipped":
				bs.Skipped += n
			default:
				bs.Pending += n
			}
		}
		byNumber[b.Batch] = bs
	}
	n := max(len(r.BatchSizes), len(r.Batches))
	for i := 1; i <= n; i++ {
		bs, ok := byNumber[i]
		if !ok {
			bs = batchState{Batch: i}
			if i <= len(r.BatchSizes) {
				bs.Devices, bs.Pending = r.BatchSizes[i-1], r.BatchSizes[i-1]
			}
		}
		s.Batches = append(s.Batches, bs)
	}
	s.TotalBatches = n
	return s
}

// watch polls the rollout and prints on change until it ends; the error carries the exit code.
func watch(ctx context.Context, c *Client, id string, o watchOptions, w io.Writer) error {
	var last *watchState
	lastOK := time.Now()
	drawn, drawnWidth := 0, 0
	resized := resizeSignal()
	defer resized.stop()
	for {
		var r rolloutDoc
		reqCtx, cancel := context.WithTimeout(ctx, min(10*time.Second, max(o.reconnect, time.Second)))
		err := c.Do(reqCtx, "GET", "/api/v1/rollouts/"+url.PathEscape(id), nil, &r)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			var apiErr *APIError
			if errors.As(err, &apiErr) && apiErr.Status < 500 {
				return err
			}
			if time.Since(lastOK) >= o.reconnect {
				return &ExitCodeError{Code: ExitConnectionLost,
					Err: fmt.Errorf("lost the connection to %s for %s: %w", c.BaseURL, o.reconnect, err)}
			}
		} else {
			lastOK = time.Now()
			st := stateOf(r)
			width := 0
			if o.tty {
				width = o.width()
			}
			if last == nil || !reflect.DeepEqual(*last, st) || (o.tty && width != drawnWidth) {
				if err := printState(w, o, st, &drawn, &drawnWidth, width); err != nil {
					return err
				}
				last = &st
			}
			if st.Status == "completed" {
				return nil
			}
			if failedEnd(st.Status) {
				return &ExitCodeError{Code: ExitRolloutFailed, Err: fmt.Errorf("rollout %s ended %s", id, st.Status)}
			}
			if st.Status == "paused" && !o.followPaused {
				why := "paused by an operator"
				if st.AutoPaused {
					why = fmt.Sprintf("auto-paused: failure rate %.2f", st.FailureRate)
				}
				return &ExitCodeError{Code: ExitRolloutPaused, Err: fmt.Errorf("rollout %s is paused (%s); resume or roll back it", id, why)}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.interval):
		case <-resized.c:
		}
	}
}

func printState(w io.Writer, o watchOptions, st watchState, drawn, drawnWidth *int, width int) error {
	switch {
	case o.format == FormatJSON:
		b, err := json.Marshal(struct {
			Time time.Time `json:"time"`
			watchState
		}{time.Now().UTC(), st})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case o.format == FormatYAML:
		if _, err := fmt.Fprintln(w, "---"); err != nil {
			return err
		}
		return render(w, FormatYAML, st, nil, nil)
	case o.tty:
		var b strings.Builder
		switch {
		case *drawn > 0 && width != *drawnWidth:
			// Lines drawn for another width may have wrapped (or been reflowed): start on a clean screen.
			b.WriteString("\x1b[H\x1b[2J")
		case *drawn > 0:
			fmt.Fprintf(&b, "\x1b[%dF\x1b[J", *drawn)
		}
		lines := barLines(st, width, o.color)
		for _, l := range lines {
			b.WriteString(l)
			b.WriteString("\n")
		}
		*drawn, *drawnWidth = len(lines), width
		_, err := io.WriteString(w, b.String())
		return err
	default:
		_, err := fmt.Fprintln(w, time.Now().UTC().Format(time.TimeOnly)+" "+progressLine(st))
		return err
	}
}

func progressLine(s watchState) string {
	line := fmt.Sprintf("%s %s -> %s status=%s batch=%d/%d updated=%d failed=%d rolled_back=%d total=%d failure_rate=%.2f",
		s.Image, dash(s.OldTag), s.NewTag, s.Status, s.CurrentBatch, s.TotalBatches, s.Updated, s.Failed, s.RolledBack,
		s.Devices, s.FailureRate)
	if s.AutoPaused {
		line += " auto_paused=true"
	}
	return line
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Bar cells: one character per share of a batch's devices.
const (
	cellCompleted  = '#'
	cellFailed     = 'X'
	cellRolledBack = 'R'
	cellInProgress = '~'
	cellPending    = '.'
)

// cellColor is the escape code that colours a cell ("" for none).
func cellColor(c rune) string {
	switch c {
	case cellCompleted:
		return "\x1b[32m"
	case cellFailed:
		return "\x1b[31m"
	case cellRolledBack:
		return "\x1b[33m"
	case cellInProgress:
		return "\x1b[36m"
	}
	return ""
}

// barLines draws a header and one line per batch, every line at most width-1 columns (so a terminal
// never wraps it and a redraw knows how many lines to go back).
func barLines(s watchState, width int, color bool) []string {
	width = max(width, 10)
	limit := width - 1
	status := s.Status
	if s.AutoPaused {
		status += " (auto-paused)"
	}
	header := fmt.Sprintf("%s %s -> %s  %s  updated %d  failed %d  rolled back %d  of %d",
		s.Image, dash(s.OldTag), s.NewTag, status, s.Updated, s.Failed, s.RolledBack, s.Devices)
	if len(header) > limit { // narrow: the numbers first, names last
		header = fmt.Sprintf("%s %d/%d failed %d %s:%s", status, s.Updated, s.Devices, s.Failed+s.RolledBack, s.Image, s.NewTag)
	}
	lines := []string{cut(header, limit)}
	for _, b := range s.Batches {
		prefix := fmt.Sprintf("batch %d ", b.Batch)
		suffix := fmt.Sprintf(" %d/%d", b.Completed, b.Devices)
		if b.Failed > 0 {
			suffix += fmt.Sprintf(" %d failed", b.Failed)
		}
		if b.RolledBack > 0 {
			suffix += fmt.Sprintf(" %d rolled back", b.RolledBack)
		}
		barWidth := min(40, limit-len(prefix)-len(suffix)-2)
		if barWidth < 5 { // no room for a bar: the numbers alone
			lines = append(lines, cut(prefix+strings.TrimSpace(suffix), limit))
			continue
		}
		cells := barCells(b, barWidth)
		lines = append(lines, cut(prefix+"["+paint(cells, color)+"]"+suffix, limit+colorOverhead(cells, color)))
	}
	return lines
}

// barCells splits width cells among the batch's devices by cumulative rounding (a finished batch fills
// the bar); any failed or rolled-back device gets at least one cell, and a batch not entirely completed
// is never a full bar of completed cells.
func barCells(b batchState, width int) []rune {
	total := max(b.Devices, 1)
	parts := []struct {
		r rune
		n int
	}{{cellCompleted, b.Completed}, {cellFailed, b.Failed}, {cellRolledBack, b.RolledBack}, {cellInProgress, b.InProgress}}
	counts := make([]int, len(parts))
	cum, prev := 0, 0
	for i, p := range parts {
		cum += p.n
		edge := min((cum*width+total/2)/total, width)
		counts[i] = edge - prev
		prev = edge
	}
	// Failures must show: take a cell from the largest other part when rounding left them none.
	for i, p := range parts {
		if p.n > 0 && counts[i] == 0 && (p.r == cellFailed || p.r == cellRolledBack) {
			j := 0
			for k := range counts {
				if counts[k] > counts[j] {
					j = k
				}
			}
			if counts[j] > 1 {
				counts[j]--
				counts[i]++
			}
		}
	}
	if counts[0] == width && b.Completed < b.Devices {
		counts[0]-- // leaves a pending or in-progress cell
		if b.InProgress > 0 {
			counts[3]++
		}
	}
	out := make([]rune, 0, width)
	for i, p := range parts {
		for range counts[i] {
			out = append(out, p.r)
		}
	}
	for len(out) < width {
		out = append(out, cellPending)
	}
	return out
}

func paint(cells []rune, color bool) string {
	if !color {
		return string(cells)
	}
	var b strings.Builder
	prev := rune(0)
	for _, c := range cells {
		if c != prev {
			if prev != 0 && cellColor(prev) != "" {
				b.WriteString("\x1b[0m")
			}
			b.WriteString(cellColor(c))
			prev = c
		}
		b.WriteRune(c)
	}
	if cellColor(prev) != "" {
		b.WriteString("\x1b[0m")
	}
	return b.String()
}

// colorOverhead is how many runes of escape codes paint adds (they take no columns).
func colorOverhead(cells []rune, color bool) int {
	return len([]rune(paint(cells, color))) - len(cells)
}
