// Package monitoring checks the Prometheus files under deploy/monitoring with Prometheus's own parsers.
package monitoring

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// TestAlertRulesAreValidPrometheusRules: deploy/monitoring/alerts.yml parses as a Prometheus rule file
// (groups, rule fields, PromQL expressions, label and annotation templates), as promtool check rules
// would, so a typo in an expression fails here and not in a running Prometheus.
func TestAlertRulesAreValidPrometheusRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile("../../deploy/monitoring/alerts.yml", false, model.UTF8Validation,
		parser.NewParser(parser.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		return
	}
	rules := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule without an alert name (%s)", g.Name, r.Expr)
			}
			rules++
		}
	}
	if rules < 5 {
		t.Fatalf("%d alert rules, want at least the five the deployment documents", rules)
	}
}
