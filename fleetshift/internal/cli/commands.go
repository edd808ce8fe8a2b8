package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// globals are the flags every operator verb shares.
type globals struct {
	server, token, output string
	out                   io.Writer
}

func (g *globals) client() (*Client, error) {
	if err := checkFormat(g.output); err != nil {
		return nil, err
	}
	return clientFromEnv(g.server, g.token)
}

// Commands returns the operator verbs, to be added to the root command.
func Commands() []*cobra.Command { return CommandsTo(os.Stdout) }

// CommandsTo is Commands writing to out.
func CommandsTo(out io.Writer) []*cobra.Command {
	g := &globals{out: out}
	cmds := []*cobra.Command{rolloutsCmd(g), policiesCmd(g), devicesCmd(g), provisioningKeysCmd(g), tokensCmd(g), eventsCmd(g), notificationsCmd(g)}
	for _, c := range cmds {
		c.PersistentFlags().StringVar(&g.server, "server", "", "fleetshift HTTP URL (default $FLEETSHIFT_URL or http://127.0.0.1:3001)")
		c.PersistentFlags().StringVar(&g.token, "token", "", "API token (default $FLEETSHIFT_TOKEN)")
		c.PersistentFlags().StringVarP(&g.output, "output", "o", FormatTable, "output format: table, json or yaml")
	}
	return cmds
}

// items returns the list in an API answer: the answer itself when it is an array, else its first array field.
func items(raw json.RawMessage) ([]map[string]any, string) {
	var list []map[string]any
	if json.Unmarshal(raw, &list) == nil {
		return list, ""
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return nil, ""
	}
	var cursor string
	if c, ok := obj["next_cursor"]; ok {
		_ = json.Unmarshal(c, &cursor)
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if json.Unmarshal(obj[k], &list) == nil && list != nil {
			return list, cursor
		}
	}
	return nil, cursor
}

func listCmd(g *globals, use, short, path string, cols []string, flags func(*cobra.Command, url.Values)) *cobra.Command {
	q := url.Values{}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			p := path
			vals := url.Values{}
			for k, v := range q {
				if len(v) > 0 && v[0] != "" {
					vals[k] = v
				}
			}
			if len(vals) > 0 {
				p += "?" + vals.Encode()
			}
			var raw json.RawMessage
			if err := c.Do(cmd.Context(), "GET", p, nil, &raw); err != nil {
				return err
			}
			list, _ := items(raw)
			rows := make([][]string, 0, len(list))
			for _, it := range list {
				row := make([]string, len(cols))
				for i, col := range cols {
					row[i] = str(it[col])
				}
				rows = append(rows, row)
			}
			var v any = raw
			return render(g.out, g.output, v, upper(cols), rows)
		},
	}
	if flags != nil {
		flags(cmd, q)
	}
	return cmd
}

// queryFlag adds a kebab-case flag (--image-name) setting the query parameter name (image_name).
func queryFlag(cmd *cobra.Command, q url.Values, name, usage string) {
	cmd.Flags().Func(strings.ReplaceAll(name, "_", "-"), usage, func(s string) error { q.Set(name, s); return nil })
}

func showCmd(g *globals, use, short, pathFmt string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var obj map[string]any
			if err := c.Do(cmd.Context(), "GET", fmt.Sprintf(pathFmt, url.PathEscape(args[0])), nil, &obj); err != nil {
				return err
			}
			return renderObject(g, obj)
		},
	}
}

// renderObject prints one object: key/value rows in table mode.
func renderObject(g *globals, obj map[string]any) error {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rows := make([][]string, 0, len(keys))
	for _, k := range keys {
		rows = append(rows, []string{k, str(obj[k])})
	}
	return render(g.out, g.output, obj, []string{"FIELD", "VALUE"}, rows)
}

func upper(cols []string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = strings.ToUpper(c)
	}
	return out
}

// postCmd sends a body built by build and prints the answer.
func postCmd(g *globals, use, short, method string, args cobra.PositionalArgs, path func([]string) string, build func([]string) (any, error)) *cobra.Command {
	return postCmdResolving(g, use, short, method, args, false, path, build)
}

// rolloutPostCmd is postCmd whose first argument is a rollout id or a unique prefix of one.
func rolloutPostCmd(g *globals, use, short, method string, args cobra.PositionalArgs, path func([]string) string, build func([]string) (any, error)) *cobra.Command {
	return postCmdResolving(g, use, short, method, args, true, path, build)
}

func postCmdResolving(g *globals, use, short, method string, args cobra.PositionalArgs, rollout bool, path func([]string) string, build func([]string) (any, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if rollout {
				id, err := resolveRollout(cmd.Context(), c, a[0])
				if err != nil {
					return err
				}
				a = append([]string{id}, a[1:]...)
			}
			var body any
			if build != nil {
				if body, err = build(a); err != nil {
					return err
				}
			}
			var obj map[string]any
			if err := c.Do(cmd.Context(), method, path(a), body, &obj); err != nil {
				return err
			}
			if obj == nil {
				obj = map[string]any{"ok": true}
			}
			return renderObject(g, obj)
		},
	}
}

func rolloutsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "rollouts", Short: "List, inspect, watch and steer rollouts",
		Long: "List, inspect, watch and steer rollouts. ROLLOUT_ID may be any unique prefix of a rollout id."}
	cmd.AddCommand(listCmd(g, "list", "List rollouts", "/api/v1/rollouts",
		[]string{"rollout_id", "image_name", "new_tag", "strategy", "status", "current_batch", "total_devices", "updated_devices", "failed_devices", "rate_per_minute"},
		func(c *cobra.Command, q url.Values) {
			queryFlag(c, q, "status", "only rollouts in this status")
			queryFlag(c, q, "image_name", "only rollouts of this image")
			queryFlag(c, q, "limit", "at most this many")
			queryFlag(c, q, "cursor", "continue after this cursor")
		}))
	cmd.AddCommand(rolloutShowCmd(g))
	for _, verb := range []string{"start", "pause", "resume", "cancel", "approve"} {
		cmd.AddCommand(rolloutPostCmd(g, verb+" ROLLOUT_ID", strings.ToUpper(verb[:1])+verb[1:]+" a rollout", "POST", cobra.ExactArgs(1),
			func(a []string) string { return "/api/v1/rollouts/" + url.PathEscape(a[0]) + "/" + verb }, nil))
	}
	rb := rolloutPostCmd(g, "rollback ROLLOUT_ID [DEVICE_UUID]", "Roll back every moved device of a rollout, or one device", "POST", cobra.RangeArgs(1, 2),
		func(a []string) string {
			if len(a) == 2 {
				return "/api/v1/rollouts/" + url.PathEscape(a[0]) + "/devices/" + url.PathEscape(a[1]) + "/rollback"
			}
			return "/api/v1/rollouts/" + url.PathEscape(a[0]) + "/rollback-all"
		}, nil)
	cmd.AddCommand(rb)
	cmd.AddCommand(planCmd(g), watchCmd(g), rolloutDevicesCmd(g), rolloutEventsCmd(g), rolloutDeviceCmd(g), rolloutRetryCmd(g))
	return cmd
}

func policiesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policies", Short: "Manage image update policies"}
	cmd.AddCommand(listCmd(g, "list", "List policies", "/api/v1/image-policies",
		[]string{"id", "image_pattern", "update_strategy", "enabled", "priority", "fleet_id", "description"}, nil))
	cmd.AddCommand(showCmd(g, "show ID", "Show one policy", "/api/v1/image-policies/%s"))
	cmd.AddCommand(policyWriteCmd(g, "create", "Create a policy from flags or -f policy.yaml", "POST", cobra.NoArgs,
		func([]string) string { return "/api/v1/image-policies" }))
	cmd.AddCommand(policyWriteCmd(g, "update ID", "Replace a policy from flags or -f policy.yaml", "PUT", cobra.ExactArgs(1),
		func(a []string) string { return "/api/v1/image-policies/" + url.PathEscape(a[0]) }))
	cmd.AddCommand(postCmd(g, "delete ID", "Delete a policy", "DELETE", cobra.ExactArgs(1),
		func(a []string) string { return "/api/v1/image-policies/" + url.PathEscape(a[0]) }, nil))
	cmd.AddCommand(policyReplayCmd(g))
	return cmd
}

// policyFields are the flags of policy create/update, named as the API fields.
var policyFields = []struct{ name, kind, usage string }{
	{"image_pattern", "string", "glob over [registry/]repository[:tag]"},
	{"update_strategy", "string", "auto, staged, manual, scheduled or rate"},
	{"staged_batches", "int", "number of batches"},
	{"batch_percentages", "ints", "cumulative batch percentages, e.g. 10,50,100"},
	{"batch_delay_minutes", "int", "delay between batches (minutes)"},
	{"batch_delay_seconds", "int", "delay between batches (seconds; wins)"},
	{"health_check_enabled", "bool", "gate batches on device health"},
	{"health_check_timeout_seconds", "int", "a device not healthy by then fails"},
	{"auto_rollback_enabled", "bool", "roll failed devices back when the rollout pauses"},
	{"max_failure_rate", "float", "pause above this failure rate (0-1)"},
	{"min_sample_size", "int", "finished devices before the failure rate counts"},
	{"maintenance_window_start", "string", "HH:MM local time"},
	{"maintenance_window_end", "string", "HH:MM local time"},
	{"timezone", "string", "IANA zone of the window"},
	{"fleet_id", "string", "only devices of this fleet"},
	{"device_tags", "strings", "only devices carrying all these tags"},
	{"device_uuids", "strings", "only these devices"},
	{"priority", "int", "wins ties between equally specific policies"},
	{"enabled", "bool", "whether the policy applies"},
	{"description", "string", "free text"},
	{"tag_policy", "string", "glob or semver"},
	{"semver_range", "string", "e.g. '>=2.0.0 <3.0.0', '~1.4', '^2'"},
	{"batch_approval", "bool", "wait for approve after each batch"},
	{"offline_grace_seconds", "int", "how long an offline device may hold its batch"},
	{"offline_action", "string", "skip or fail an offline device after its grace"},
	{"dynamic_inclusion", "bool", "devices that start running the image join an active rollout"},
	{"max_retries", "int", "re-dispatch a failed device up to N times before it counts as failed (0-10)"},
	{"rate_base_per_minute", "int", "rate strategy: devices a minute to start with (required for rate)"},
	{"rate_increment_factor", "float", "rate strategy: multiply the rate by this at each raise (above 1, at most 5; default 2)"},
	{"rate_increase_criteria", "string", "rate strategy: notified or succeeded devices count towards a raise (default succeeded)"},
	{"rate_increase_threshold", "int", "rate strategy: raise the rate each time this many more devices met the criteria (default: the base rate)"},
	{"rate_maximum_per_minute", "int", "rate strategy: never raise the rate above this (default: 10 x the base rate)"},
	{"download_ahead", "bool", "scheduled only: devices pull the new image before the window opens, switch inside it"},
}

func policyWriteCmd(g *globals, use, short, method string, args cobra.PositionalArgs, path func([]string) string) *cobra.Command {
	var file string
	vals := map[string]any{}
	cmd := postCmd(g, use, short, method, args, path, func([]string) (any, error) {
		body := map[string]any{}
		if file != "" {
			b, err := readFileOrStdin(file)
			if err != nil {
				return nil, err
			}
			if err := yaml.Unmarshal(b, &body); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
		}
		for k, v := range vals {
			body[k] = v
		}
		if len(body) == 0 {
			return nil, fmt.Errorf("nothing to send: give flags or -f policy.yaml")
		}
		return body, nil
	})
	cmd.Flags().StringVarP(&file, "file", "f", "", "policy as YAML or JSON (- for stdin); flags override its fields")
	for _, f := range policyFields {
		name := f.name
		flagName := strings.ReplaceAll(name, "_", "-")
		switch f.kind {
		case "string":
			cmd.Flags().Func(flagName, f.usage, func(s string) error { vals[name] = s; return nil })
		case "int":
			cmd.Flags().Func(flagName, f.usage, func(s string) error {
				var n int
				if _, err := fmt.Sscan(s, &n); err != nil {
					return fmt.Errorf("want an integer")
				}
				vals[name] = n
				return nil
			})
		case "float":
			cmd.Flags().Func(flagName, f.usage, func(s string) error {
				var x float64
				if _, err := fmt.Sscan(s, &x); err != nil {
					return fmt.Errorf("want a number")
				}
				vals[name] = x
				return nil
			})
		case "bool":
			cmd.Flags().Func(flagName, f.usage+" (true/false)", func(s string) error {
				switch s {
				case "true", "1", "yes":
					vals[name] = true
				case "false", "0", "no":
					vals[name] = false
				default:
					return fmt.Errorf("want true or false")
				}
				return nil
			})
		case "ints":
			cmd.Flags().Func(flagName, f.usage, func(s string) error {
				var out []int
				for _, p := range strings.Split(s, ",") {
					var n int
					if _, err := fmt.Sscan(strings.TrimSpace(p), &n); err != nil {
						return fmt.Errorf("want comma-separated integers")
					}
					out = append(out, n)
				}
				vals[name] = out
				return nil
			})
		case "strings":
			cmd.Flags().Func(flagName, f.usage+" (comma-separated)", func(s string) error {
				vals[name] = strings.Split(s, ",")
				return nil
			})
		}
	}
	return cmd
}

func readFileOrStdin(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(os.Stdin)
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

func devicesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "devices", Short: "List, show, register and revoke devices; set and read their state"}
	cmd.AddCommand(listCmd(g, "list", "List devices", "/api/v1/devices",
		[]string{"uuid", "device_name", "fleet_id", "tags", "is_online", "last_seen_at"},
		func(c *cobra.Command, q url.Values) {
			queryFlag(c, q, "fleet_id", "only devices of this fleet")
			queryFlag(c, q, "tag", "only devices with this tag")
			queryFlag(c, q, "limit", "at most this many")
			queryFlag(c, q, "cursor", "continue after this cursor")
		}))
	cmd.AddCommand(showCmd(g, "show UUID", "Show one device", "/api/v1/devices/%s"))
	var uuid, fleet string
	var tags []string
	reg := postCmd(g, "register NAME", "Register a device; prints its key once", "POST", cobra.ExactArgs(1),
		func([]string) string { return "/api/v1/devices" },
		func(a []string) (any, error) {
			body := map[string]any{"device_name": a[0]}
			if uuid != "" {
				body["uuid"] = uuid
			}
			if fleet != "" {
				body["fleet_id"] = fleet
			}
			if len(tags) > 0 {
				body["tags"] = tags
			}
			return body, nil
		})
	reg.Flags().StringVar(&uuid, "uuid", "", "device uuid (default: generated)")
	reg.Flags().StringVar(&fleet, "fleet", "", "fleet id")
	reg.Flags().StringSliceVar(&tags, "tag", nil, "tag (repeatable)")
	cmd.AddCommand(reg)
	cmd.AddCommand(postCmd(g, "revoke UUID", "Revoke a device: its key and NATS access stop working (history stays)", "DELETE", cobra.ExactArgs(1),
		func(a []string) string { return "/api/v1/devices/" + url.PathEscape(a[0]) }, nil))
	cmd.AddCommand(setTargetCmd(g), currentStateCmd(g))
	return cmd
}

func provisioningKeysCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "provisioning-keys", Short: "Manage fleet provisioning keys"}
	var fleet, expires string
	var maxDevices int
	create := postCmd(g, "create", "Create a provisioning key for a fleet; prints the key once", "POST", cobra.NoArgs,
		func([]string) string { return "/api/v1/provisioning-keys" },
		func([]string) (any, error) {
			if fleet == "" {
				return nil, fmt.Errorf("--fleet is required")
			}
			body := map[string]any{"fleet_id": fleet}
			if expires != "" {
				body["expires_at"] = expires
			}
			if maxDevices > 0 {
				body["max_devices"] = maxDevices
			}
			return body, nil
		})
	create.Flags().StringVar(&fleet, "fleet", "", "fleet id (required)")
	create.Flags().StringVar(&expires, "expires-at", "", "RFC 3339 expiry")
	create.Flags().IntVar(&maxDevices, "max-devices", 0, "how many devices may register with it")
	cmd.AddCommand(create)
	cmd.AddCommand(listCmd(g, "list", "List provisioning keys", "/api/v1/provisioning-keys",
		[]string{"id", "fleet_id", "expires_at", "max_devices", "devices_registered", "revoked_at"}, nil))
	cmd.AddCommand(postCmd(g, "revoke ID", "Revoke a provisioning key", "DELETE", cobra.ExactArgs(1),
		func(a []string) string { return "/api/v1/provisioning-keys/" + url.PathEscape(a[0]) }, nil))
	return cmd
}

func tokensCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Manage API tokens (scopes read, operate, admin)"}
	var scope string
	create := postCmd(g, "create NAME", "Create a token; prints it once", "POST", cobra.ExactArgs(1),
		func([]string) string { return "/api/v1/tokens" },
		func(a []string) (any, error) { return map[string]any{"name": a[0], "scope": scope}, nil })
	create.Flags().StringVar(&scope, "scope", "read", "read, operate or admin")
	cmd.AddCommand(create)
	cmd.AddCommand(listCmd(g, "list", "List tokens", "/api/v1/tokens",
		[]string{"id", "name", "scope", "created_at", "last_used_at", "revoked_at"}, nil))
	cmd.AddCommand(postCmd(g, "revoke ID", "Revoke a token", "DELETE", cobra.ExactArgs(1),
		func(a []string) string { return "/api/v1/tokens/" + url.PathEscape(a[0]) }, nil))
	return cmd
}
