package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"gopkg.in/yaml.v3"
)

// Output formats.
const (
	FormatTable = "table"
	FormatJSON  = "json"
	FormatYAML  = "yaml"
)

func checkFormat(f string) error {
	switch f {
	case FormatTable, FormatJSON, FormatYAML:
		return nil
	}
	return fmt.Errorf("--output %q: want table, json or yaml", f)
}

// render writes v as JSON or YAML, or, for table, the header and rows.
func render(w io.Writer, format string, v any, header []string, rows [][]string) error {
	switch format {
	case FormatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case FormatYAML:
		// Round-trip through JSON so field names match the API's.
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var generic any
		if err := json.Unmarshal(b, &generic); err != nil {
			return err
		}
		return yaml.NewEncoder(w).Encode(generic)
	default:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, strings.Join(header, "\t"))
		for _, r := range rows {
			fmt.Fprintln(tw, strings.Join(r, "\t"))
		}
		return tw.Flush()
	}
}

// maxCell caps a table cell; longer text is cut with an ellipsis.
const maxCell = 60

// str renders a JSON value for a table cell: scalars as text, lists of scalars comma-joined, anything
// nested as a count. A table never shows raw JSON; -o json and -o yaml give the whole document.
func str(v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		if x == "" {
			return "-"
		}
		return cut(strings.Join(strings.Fields(x), " "), maxCell)
	case float64:
		if x == float64(int64(x)) {
			return fmt.Sprintf("%d", int64(x))
		}
		return fmt.Sprintf("%.3g", x)
	case bool:
		return fmt.Sprint(x)
	case []any:
		if len(x) == 0 {
			return "-"
		}
		parts := make([]string, 0, len(x))
		for _, e := range x {
			switch e.(type) {
			case map[string]any, []any:
				return plural(len(x), "item")
			}
			parts = append(parts, str(e))
		}
		return cut(strings.Join(parts, ","), maxCell)
	case map[string]any:
		if len(x) == 0 {
			return "-"
		}
		return plural(len(x), "field")
	default:
		return cut(fmt.Sprint(x), maxCell)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "(1 " + what + ")"
	}
	return fmt.Sprintf("(%d %ss)", n, what)
}

// cut shortens s to at most n runes, marking the cut.
func cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// yamlOrJSON decodes a YAML or JSON document (JSON is YAML).
func yamlOrJSON(b []byte, v any) error { return yaml.Unmarshal(b, v) }
