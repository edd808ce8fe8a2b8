package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Row is one line of the result table: a measurement of fleetshift beside its baseline and goal.
type Row struct {
	// Name is the measurement's name (poll_304, plan_1m, ...).
	Name string
	// Value is fleetshift's median figure in Unit; Text, when set, is shown instead of it.
	Value float64
	Unit  string
	Text  string
	// Baseline is the baseline's median figure in the same unit; zero means there is none.
	Baseline     float64
	BaselineText string
	// Goal says what must hold; Pass whether it did. NoGoal marks informational rows.
	Goal   string
	Pass   bool
	NoGoal bool
	// Err is set when the measurement could not be taken; the row then fails.
	Err error
	// Note is printed under the table (sizes, method, caveats).
	Note string
}

// Ratio is Value / Baseline, or NaN when there is no baseline.
func (r Row) Ratio() float64 {
	if r.Baseline == 0 || r.Err != nil {
		return math.NaN()
	}
	return r.Value / r.Baseline
}

// Cells renders the row as the table's six cells: name, fleetshift, baseline, ratio, goal, pass.
func (r Row) Cells() [6]string {
	value := r.Text
	if value == "" {
		value = FormatValue(r.Value, r.Unit)
	}
	base := r.BaselineText
	if base == "" {
		base = "-"
		if r.Baseline != 0 {
			base = FormatValue(r.Baseline, r.Unit)
		}
	}
	ratio := "-"
	if q := r.Ratio(); !math.IsNaN(q) {
		ratio = fmt.Sprintf("%.2fx", q)
	}
	pass := "no"
	switch {
	case r.Err != nil:
		value, pass = "error: "+oneLine(r.Err.Error()), "no"
	case r.NoGoal:
		pass = "-"
	case r.Pass:
		pass = "yes"
	}
	goal := r.Goal
	if goal == "" {
		goal = "-"
	}
	return [6]string{r.Name, value, base, ratio, goal, pass}
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

// FormatValue renders v in unit with a precision suited to its size: 41,250 req/s, 1.84 s, 12.3 ms.
func FormatValue(v float64, unit string) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	var num string
	switch a := math.Abs(v); {
	case a >= 1000:
		num = groupThousands(int64(math.Round(v)))
	case a >= 100:
		num = fmt.Sprintf("%.0f", v)
	case a >= 10:
		num = fmt.Sprintf("%.1f", v)
	default:
		num = fmt.Sprintf("%.2f", v)
	}
	if unit == "" {
		return num
	}
	return num + " " + unit
}

func groupThousands(n int64) string {
	neg := n < 0
	if neg {
		n = -n
	}
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// TableHeader is the header of the result table, with its fixed columns.
var tableHeader = [6]string{"name", "fleetshift", "baseline", "ratio", "goal", "pass"}

// RenderTable renders rows as a Markdown table with the columns name | fleetshift | baseline | ratio |
// goal | pass.
func RenderTable(rows []Row) string {
	var b strings.Builder
	line := func(cells [6]string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" " + c + " |")
		}
		b.WriteString("\n")
	}
	line(tableHeader)
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, r := range rows {
		line(r.Cells())
	}
	return b.String()
}

// Report is one run of the harness as written to docs/benchmarks.md.
type Report struct {
	Date    time.Time
	Set     string
	Command string
	Machine Machine
	Rows    []Row
	// Notes are extra paragraphs (sizes, process layout, profiles).
	Notes []string
}

// Passed reports whether every row with a goal passed.
func (r Report) Passed() bool {
	for _, row := range r.Rows {
		if row.Err != nil || (!row.NoGoal && !row.Pass) {
			return false
		}
	}
	return true
}

// WriteMarkdown writes the report: title, date, machine, exact command, the table and the notes.
func (r Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Latest `%s` run of the harness in `fleetshift/cmd/fleetshift-bench`. Each figure is the\n", r.Set)
	fmt.Fprintf(&b, "median of at least 3 repetitions after a warm-up; every baseline was measured in the same run on the same machine.\n\n")
	fmt.Fprintf(&b, "- date: %s\n", r.Date.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %s\n", r.Machine.String())
	fmt.Fprintf(&b, "- command: `%s`\n", r.Command)
	fmt.Fprintf(&b, "- set: %s\n\n", r.Set)
	b.WriteString(RenderTable(r.Rows))
	b.WriteString("\n")
	var notes []string
	for _, row := range r.Rows {
		if row.Note != "" {
			notes = append(notes, fmt.Sprintf("- `%s`: %s", row.Name, row.Note))
		}
	}
	if len(notes) > 0 {
		b.WriteString("Method and sizes:\n\n")
		b.WriteString(strings.Join(notes, "\n"))
		b.WriteString("\n\n")
	}
	for _, n := range r.Notes {
		b.WriteString(n)
		b.WriteString("\n\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
